/* Decode attention over one tier's pages, split-K (flash-decoding). A work-group takes
 * one (sequence, kv-head) and one chunk of its tokens in this tier, and serves all G
 * q-heads of the GQA group, so each page is read once per step. Every tier writes its
 * chunks' partials (max, sum, acc[D] per q-head) into one array (chunk_offset of
 * total_chunks), and decode_merge.cl combines them all by log-sum-exp: one decode call
 * covers the F16 pages (sinks, recent window) and every compressed tier together.
 *
 * Tiers (build define ADA or not):
 *   F16: keys [D/8][P][8] halves, logits q.k with the query in local/private memory;
 *   ADA: keys as packed pair codes [KW][P] + fp16 norms, logits from the codes alone:
 *        n * kscale * sum_j J[j][code_j][g], J the per-query joint table R[r] T[j][c]
 *        where it is small, else R[r_j] T[j][c_j][g] (cl/ada_query.cl; its two
 *        layouts in cl/common.h); values dequantised on the fly. No dense key is ever
 *        formed: a pair's code is a table index, never a coordinate.
 * Two variants: decode_gpu (a slot per work-item, TILE work-items, local memory) and
 * decode_cpu (one work-item per chunk, private accumulators, no barriers), built with
 * DECODE_CPU: a program holds one of them, so a GPU compiler never sees the CPU code.
 * C references: src/ref_attention.c, src/ada.c, src/value_quant.c.
 * Build defines: D, P, G, TILE (a power of two >= D/2 and >= G), SEG_POW2 (the power of
 * two >= TILE / G); ADA tiers also RB, AB, KW, VB, VG. */

#define PAIRS (D / 2)
#define PARTS (TILE / PAIRS)
#define SEG (TILE / G)             /* work-items per q-head in the max reduction */
#define PARTIAL_FLOATS (G * (D + 2))

#ifdef ADA
#define VBYTES (D * VB / 8 + D / VG * 4)
#define PAGE_BYTES (P * (KW * 4 + 2 + VBYTES + 4))
#define VMASK ((1u << VB) - 1u)

/* Pair code j (radius in the low RB bits) from a slot's key words. */
#define PAIR_CODE(words, j)                                                                \
    ((((words)[((j) * (RB + AB)) / 32] >> (((j) * (RB + AB)) % 32)) |                      \
      ((((j) * (RB + AB)) % 32 + RB + AB > 32) ? (words)[((j) * (RB + AB)) / 32 + 1]       \
                                                      << (32 - ((j) * (RB + AB)) % 32)     \
                                                : 0u)) &                                   \
     ((1u << (RB + AB)) - 1u))

inline __global const uchar *value_row(__global const uchar *page, uint slot)
{
    return page + KW * P * 4 + P * 2 + slot * VBYTES;
}

inline float value_at(__global const uchar *vo, uint i)
{
    __global const half *prm = (__global const half *)(vo + D * VB / 8);
    const uint q = (vo[i * VB / 8] >> (i * VB % 8)) & VMASK;
    return vload_half(2 * (i / VG) + 1, prm) + (float)q * vload_half(2 * (i / VG), prm);
}

inline float2 load_v2(__global const uchar *page, uint slot, uint pair)
{
    __global const uchar *vo = value_row(page, slot);
    return (float2)(value_at(vo, 2 * pair), value_at(vo, 2 * pair + 1));
}

/* decode_cpu's value accumulators are units of 16 dims; one unpack of a value row's codes
 * yields UNITS of them (value rows start 8-byte aligned, so whole-word loads). VB = 4
 * unpacks a 32-dim block (16 bytes) at once into its low nibbles, the even dims, and its
 * high nibbles, the odd dims: unit 2b holds block b's even dims, 2b + 1 its odd ones
 * (decode_cpu puts them back in order at the end). VB = 8, 2: unit i is dims 16i .. 16i + 15. */
#if VB == 4
#define UNITS 2
#else
#define UNITS 1
#endif
inline void value_units(__global const uchar *vo, uint i, float16 *u)
{
    __global const ulong *w = (__global const ulong *)vo;
#if VB == 8 /* (vload16 of uchar became 8 word inserts) */
    u[0] = convert_float16(as_uchar16((ulong2)(w[2 * i], w[2 * i + 1])));
#elif VB == 4
    const uint16 x = convert_uint16(as_uchar16((ulong2)(w[2 * i], w[2 * i + 1])));
    u[0] = convert_float16(x & (uint16)(15));
    u[1] = convert_float16(x >> (uint16)(4));
#else
    const uint x = ((__global const uint *)vo)[i];
    u[0] = convert_float16(((uint16)(x) >> (uint16)(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)) &
                           (uint16)(VMASK));
#endif
}

/* Unit u of value_units alone (the other unit's registers stay free). */
__attribute__((always_inline)) inline float16 value_unit(__global const uchar *vo, uint i, uint u)
{
#if VB == 4
    __global const ulong *w = (__global const ulong *)vo;
    const uint16 x = convert_uint16(as_uchar16((ulong2)(w[2 * i], w[2 * i + 1])));
    return convert_float16(u ? x >> (uint16)(4) : x & (uint16)(15));
#else
    float16 q[1];
    value_units(vo, i, q);
    return q[0];
#endif
}

#define NC (NR * NS) /* pair codes */
#define TABLE_FLOATS ((D / 2) * (ADA_JOINT ? NC : NS) * G) /* per (sequence, kv-head), by slot */
#define LANE_FLOATS ((D / 2) * G * LANE_N)                /* by lane (cl/common.h) */

/* decode_gpu: logits of one slot for the G q-heads, dot_g[g] = n * sum_j J[j][code_j][g]
 * (tables by slot: the G entries of a code are adjacent, read 4 at a time where G
 * allows). */
#define G4 (G / 4)
#define ADA_SLOT_LOGITS(page, slot, tab, params, dot_g)                                    \
    do {                                                                                   \
        __global const uint *kw_ = (__global const uint *)(page) + (slot);                 \
        uint words_[KW + 1];                                                               \
        SKV_UNROLL for (uint w_ = 0; w_ < KW; w_++) words_[w_] = kw_[w_ * P];              \
        words_[KW] = 0;                                                                    \
        float4 a4_[G4 > 0 ? G4 : 1];                                                       \
        float as_[G];                                                                      \
        SKV_UNROLL for (uint g_ = 0; g_ < G4; g_++) a4_[g_] = (float4)(0.0f);              \
        SKV_UNROLL for (uint g_ = 4 * G4; g_ < G; g_++) as_[g_] = 0.0f;                    \
        SKV_UNROLL for (uint j_ = 0; j_ < D / 2; j_++) {                                   \
            const uint code_ = PAIR_CODE(words_, j_);                                      \
            const float r_ = ADA_JOINT ? 1.0f : (params)[code_ & (NR - 1)];                \
            __global const float *t_ =                                                     \
                (tab) + (ADA_JOINT ? j_ * NC + code_ : j_ * NS + (code_ >> RB)) * G;       \
            SKV_UNROLL for (uint g_ = 0; g_ < G4; g_++) a4_[g_] += r_ * vload4(g_, t_);    \
            SKV_UNROLL for (uint g_ = 4 * G4; g_ < G; g_++) as_[g_] += r_ * t_[g_];        \
        }                                                                                  \
        SKV_UNROLL for (uint g_ = 0; g_ < G4; g_++) vstore4(a4_[g_], g_, dot_g);           \
        SKV_UNROLL for (uint g_ = 4 * G4; g_ < G; g_++) dot_g[g_] = as_[g_];               \
        const float n_ = vload_half((slot), (__global const half *)((page) + KW * P * 4)); \
        SKV_UNROLL for (uint g_ = 0; g_ < G; g_++) dot_g[g_] *= n_;                        \
    } while (0)

#ifdef DECODE_CPU
/* decode_cpu: LANES slots at once (16, 8 or 4: the device's float vector width), a slot
 * per vector lane. The lookup of LANES codes in a piece of LANES floats is written as a
 * vector of element extracts, which LLVM lowers to one variable permute (x86: vpermps
 * zmm with AVX-512, vpermps ymm with AVX2, vpermilps xmm with AVX); a row longer than a
 * vector is looked up piece by piece and the pieces merged by selects. */
#ifndef LANES
#define LANES 16
#endif
#if LANES == 16
#define floatL float16
#define uintL uint16
#define intL int16
#define vloadL vload16
#define vstoreL vstore16
#define vload_halfL vload_half16
#define as_floatL as_float16
#define as_uintL as_uint16
#define LANES_LOG2 4
__attribute__((always_inline)) inline float16 lut(float16 row, uint16 i)
{
    return (float16)(row[i.s0], row[i.s1], row[i.s2], row[i.s3], row[i.s4], row[i.s5], row[i.s6], row[i.s7],
                     row[i.s8], row[i.s9], row[i.sa], row[i.sb], row[i.sc], row[i.sd], row[i.se], row[i.sf]);
}
#elif LANES == 8
#define floatL float8
#define uintL uint8
#define intL int8
#define vloadL vload8
#define vstoreL vstore8
#define vload_halfL vload_half8
#define as_floatL as_float8
#define as_uintL as_uint8
#define LANES_LOG2 3
__attribute__((always_inline)) inline float8 lut(float8 row, uint8 i)
{
    return (float8)(row[i.s0], row[i.s1], row[i.s2], row[i.s3], row[i.s4], row[i.s5], row[i.s6], row[i.s7]);
}
#elif LANES == 4
#define floatL float4
#define uintL uint4
#define intL int4
#define vloadL vload4
#define vstoreL vstore4
#define vload_halfL vload_half4
#define as_floatL as_float4
#define as_uintL as_uint4
#define LANES_LOG2 2
__attribute__((always_inline)) inline float4 lut(float4 row, uint4 i)
{
    return (float4)(row[i.s0], row[i.s1], row[i.s2], row[i.s3]);
}
#else
#error "LANES is 16, 8 or 4"
#endif

/* t[i] for i < n <= 16, the table given as pieces of LANES floats (a constant n, so the
 * loop over pieces unrolls and vanishes where n <= LANES) */
__attribute__((always_inline)) inline floatL lut_pieces(const floatL *t, uint n, uintL i)
{
    const uintL lo = i & (uintL)(LANES - 1), hi = i >> (uintL)(LANES_LOG2);
    floatL r = lut(t[0], lo);
    SKV_UNROLL for (uint k = 1; k < 16 / LANES; k++)
        if (k * LANES < n)
            r = select(r, lut(t[k], lo), hi == (uintL)(k));
    return r;
}

/* row[i] for i < LANE_USED, a lane table row of LANE_N = 16 floats */
__attribute__((always_inline)) inline floatL lane_lookup(__global const float *row, uintL i)
{
#if LANE_N != 16
#error "lane tables hold rows of 16 entries"
#endif
    floatL t[16 / LANES];
    SKV_UNROLL for (uint k = 0; k < 16 / LANES; k++)
        t[k] = k * LANES < LANE_USED ? vloadL(k, row) : (floatL)(0.0f);
    return lut_pieces(t, LANE_USED, i);
}

#define PC (32 / ((RB + AB) & -(RB + AB)) > D / 2 ? D / 2 : 32 / ((RB + AB) & -(RB + AB))) /* pairs per run */
#define WC (PC * (RB + AB) / 32) /* words per run */

/* The logits of slots slot0 .. slot0 + LANES - 1 of a page for the G q-heads, times
 * `scale`: lg[g][s] = scale * n_s * sum_j J[j][g][code_sj] (LANE_JOINT), else
 * scale * n_s * sum_j R[r_sj] T[j][g][c_sj]; two interleaved sums over j per q-head. */
__attribute__((always_inline)) inline void ada_lane_logits(__global const uchar *page, uint slot0, __global const float *tab,
                                                    __constant float *params, float scale, floatL *lg)
{
    __global const uint *kw = (__global const uint *)page + slot0;
    floatL a[2][G];
    SKV_UNROLL for (uint g = 0; g < G; g++)
        a[0][g] = a[1][g] = (floatL)(0.0f);
#if !LANE_JOINT
    float rad[16];
    SKV_UNROLL for (uint r = 0; r < 16; r++)
        rad[r] = r < NR ? params[r] : 0.0f;
    floatL rrow[16 / LANES];
    SKV_UNROLL for (uint k = 0; k < 16 / LANES; k++)
        rrow[k] = vloadL(k, rad);
#endif
    /* pairs in runs of PC whose codes fill WC whole words: a run's shifts are constants
     * (the loop over runs is kept rolled, so its lookups don't all compete for registers) */
    _Pragma("unroll 1") for (uint run = 0; run < D / 2 / PC; run++) {
        __global const uint *rw = kw + run * WC * P;
        __global const float *rt = tab + run * PC * G * LANE_N;
        SKV_UNROLL for (uint jj = 0; jj < PC; jj++) {
            const uint bit = jj * (RB + AB), wi = bit / 32, sh = bit % 32;
            uintL code = vloadL(0, rw + wi * P) >> (uintL)(sh);
            if (sh + RB + AB > 32)
                code |= vloadL(0, rw + (wi + 1) * P) << (uintL)(32 - sh);
            __global const float *row = rt + jj * G * LANE_N;
#if LANE_JOINT
            code &= (uintL)(NC - 1);
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[jj % 2][g] += lane_lookup(row + g * LANE_N, code);
#else
            floatL r = lut_pieces(rrow, NR, code & (uintL)(NR - 1));
            code >>= (uintL)(RB);
#if LANE_HALF /* angles of the second half: T negated, so R takes the sign */
            r = as_floatL(as_uintL(r) ^ ((code & (uintL)(NS / 2)) << (uintL)(32 - AB)));
#endif
            code &= (uintL)(LANE_USED - 1);
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[jj % 2][g] = fma(r, lane_lookup(row + g * LANE_N, code), a[jj % 2][g]);
#endif
        }
    }
    const floatL n = vload_halfL(0, (__global const half *)(page + KW * P * 4) + slot0) * scale;
    SKV_UNROLL for (uint g = 0; g < G; g++)
        lg[g] = (a[0][g] + a[1][g]) * n;
}
#endif /* DECODE_CPU */
#else
#define PAGE_BYTES (P * (4 * D + 4))

inline float2 load_v2(__global const uchar *page, uint slot, uint pair)
{
    return vload_half2(pair, (__global const half *)page + P * D + slot * D);
}

#endif

#define DECODE_PARAMS                                                                      \
    SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,                \
        __global const uint *lens, uint H, __global const uchar *q, ulong q_offset, uint q_dtype, \
        float scale, uint tiles_per_chunk, uint n_chunks, uint chunk_offset, uint total_chunks, \
        __global float *partials, __global const float *tables, __constant float *params,          \
        __global float *logits, uint logit_stride

/* OBSERVE (the observed-attention scorer): the scaled logit of every token for every
 * q-head also goes to logits[(bh * G + g) * logit_stride + token], for observe() below. */
#ifdef OBSERVE
#define KEEP_LOGIT(bh, g, t, v) (logits[((size_t)(bh) * G + (g)) * logit_stride + (t)] = (v))
#else
#define KEEP_LOGIT(bh, g, t, v) ((void)0)
#endif

/* `scale` multiplies the logits: the softmax scale (ADA: times sqrt(2/D) and the tier's
 * logit correction). `tables` (ADA): the per-query tables of ada_query, by slot for
 * decode_gpu, by lane for decode_cpu (cl/common.h). */

#ifndef DECODE_CPU
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
#ifdef ADA
    __global const float *tab = tables + (size_t)bh * TABLE_FLOATS;
#else
    for (uint i = lid; i < G * D; i += TILE)
        qs[i] = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, ((size_t)b * H * G + h * G) * D + i);
#endif
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
#ifdef ADA
            ADA_SLOT_LOGITS(page, t % P, tab, params, dot_g);
#else
            __global const half *kp = (__global const half *)page + (t % P) * 8;
            for (uint g = 0; g < G; g++)
                dot_g[g] = 0.0f;
            for (uint i = 0; i < D / 8; i++) {
                float8 k8 = vload_half8(0, kp + i * P * 8);
                for (uint g = 0; g < G; g++) {
                    __local const float *qg = qs + g * D + i * 8;
                    dot_g[g] += dot(k8.lo, vload4(0, qg)) + dot(k8.hi, vload4(1, qg));
                }
            }
#endif
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
#endif /* !DECODE_CPU */

#ifdef DECODE_CPU
/* The CPU variant (PoCL and other CPU runtimes): one work-item per work-group owns a
 * (sequence, kv-head, chunk) and walks it in blocks of TB slots with private vector
 * accumulators, no local memory and no barriers (which a CPU runtime turns into loops
 * over spilled work-item state). F16 keys are read KB slots at a time, so each run of
 * a key row is read in order; ADA keys LANES slots at a time, a slot per vector lane
 * (ada_lane_logits). The softmax max is taken per block, so the accumulators are
 * rescaled at most once per block. Same partials. */
#ifdef ADA
#define TB LANES /* a block's logits are one floatTB per q-head */
#define floatTB floatL
#define intTB intL
#define vloadTB vloadL
#define vstoreTB vstoreL
#else
#define TB 8
#define floatTB float8
#define intTB int8
#define vloadTB vload8
#define vstoreTB vstore8
#endif
#if TB == 16
#define TB_LANES (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#elif TB == 8
#define TB_LANES (int8)(0, 1, 2, 3, 4, 5, 6, 7)
#else
#define TB_LANES (int4)(0, 1, 2, 3)
#endif
#if TILE % TB || P % TB
#error "chunks and pages hold whole blocks"
#endif
/* ADA values: accumulate a code unpack's units one at a time with one FMA chain per
 * q-head (VSPLIT: G q-heads' accumulators fit 16 vector registers) or together with two
 * chains (32 registers). */
#ifndef VSPLIT
#define VSPLIT (LANES < 16)
#endif
#ifndef KB
#define KB (G >= 16 ? 1 : (G >= 8 ? 2 : (G >= 4 ? 4 : 8))) /* F16 slots per key pass */
#endif

inline float hmax_tb(floatTB x)
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

inline float hsum_tb(floatTB x)
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
    const uint chunk = get_group_id(0);
    const uint bh = get_group_id(1);
    const uint b = bh / H, h = bh % H;
    const uint len = lens[bh];
    const uint first_page = indptr[bh];
    const uint tok_begin = chunk * tiles_per_chunk * TILE;
    const uint tok_end = min(len, tok_begin + tiles_per_chunk * TILE);

#ifdef ADA
#if VG % (16 * UNITS) || D / VG > 8
#error "value groups of whole code unpacks, at most 8 per row"
#endif
#define GROUPS (D / VG)
#if GROUPS == 8
#define PRM_FLOATS float16
#define PRM_LOAD vload_half16
#define GROUPS_STORE vstore8
#elif GROUPS == 4
#define PRM_FLOATS float8
#define PRM_LOAD vload_half8
#define GROUPS_STORE vstore4
#else
#define PRM_FLOATS float4
#define PRM_LOAD vload_half4
#define GROUPS_STORE vstore2
#endif
    __global const float *tab = tables + (size_t)bh * LANE_FLOATS;
    /* values: acc holds sum p sc q in the code domain, bias sum p mn per group */
    float16 acc[G][D / 16];
    float bias[G][GROUPS];
    for (uint g = 0; g < G; g++) {
        for (uint i = 0; i < D / 16; i++)
            acc[g][i] = (float16)(0.0f);
        for (uint k = 0; k < GROUPS; k++)
            bias[g][k] = 0.0f;
    }
#else
    float8 acc[G][D / 8];
    float8 q8[G][D / 8];
    for (uint g = 0; g < G; g++)
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
            q8[g][i] = x * scale; /* fold the logit scale into the query */
            acc[g][i] = (float8)(0.0f);
        }
#endif
    float m[G], l[G];
    for (uint g = 0; g < G; g++) {
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
#ifdef ADA
        ada_lane_logits(page, slot0, tab, params, scale, s); /* slots past the fill: read, then ignored */
#else
        /* logits, KB slots at a time: those slots' 16-byte pieces of a key row are one
         * contiguous run, read in order, and KB * G vector accumulators fit in registers */
        float sl[G][TB];
        if (n < TB) /* lanes past the fill: defined, then masked below */
            SKV_UNROLL for (uint g = 0; g < G; g++)
                vstoreTB((floatTB)(0.0f), 0, sl[g]);
        for (uint j0 = 0; j0 < n; j0 += KB) {
            float8 a[KB][G];
            SKV_UNROLL for (uint j = 0; j < KB; j++)
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[j][g] = (float8)(0.0f);
            __global const half *kp = (__global const half *)page + (slot0 + j0) * 8;
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
                    sl[g][(j0 + j) % TB] = (y.x + y.y) + (y.z + y.w);
                }
        }
        SKV_UNROLL for (uint g = 0; g < G; g++)
            s[g] = vloadTB(0, sl[g]);
#endif
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
#ifdef ADA
                for (uint i = 0; i < D / 16; i++)
                    acc[g][i] *= alpha;
                for (uint k = 0; k < GROUPS; k++)
                    bias[g][k] *= alpha;
#else
                for (uint i = 0; i < D / 8; i++)
                    acc[g][i] *= alpha;
#endif
                m[g] = mb;
            }
            const floatTB e = exp(x - (floatTB)(m[g]));
            l[g] += hsum_tb(e);
            vstoreTB(e, 0, p[g]);
        }
#ifdef ADA
        /* values in the code domain: per (token, group) fold the scale into p and add p mn
         * to the group's bias, so 16 dims cost G FMAs and a share of a code unpack */
        float ps[TB][G][GROUPS];
        for (uint j = 0; j < n; j++) {
            /* the row's (scale, min) halves in one load */
            const PRM_FLOATS prm = PRM_LOAD(0, (__global const half *)(value_row(page, slot0 + j) + D * VB / 8));
            float sc[GROUPS], mn[GROUPS];
            GROUPS_STORE(prm.even, 0, sc);
            GROUPS_STORE(prm.odd, 0, mn);
            SKV_UNROLL for (uint g = 0; g < G; g++)
                SKV_UNROLL for (uint k = 0; k < GROUPS; k++) {
                    ps[j][g][k] = p[g][j] * sc[k];
                    bias[g][k] = fma(p[g][j], mn[k], bias[g][k]);
                }
        }
        for (uint i = 0; i < D / 16 / UNITS; i++) {
            const uint k = 16 * UNITS * i / VG; /* the units' value group */
#if VSPLIT /* a unit at a time, one FMA chain per q-head */
            _Pragma("unroll 1") for (uint u = 0; u < UNITS; u++) {
                float16 a[G];
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[g] = acc[g][UNITS * i + u];
                for (uint j = 0; j < n; j++) {
                    const float16 q0 = value_unit(value_row(page, slot0 + j), i, u);
                    SKV_UNROLL for (uint g = 0; g < G; g++)
                        a[g] = fma((float16)(ps[j][g][k]), q0, a[g]);
                }
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    acc[g][UNITS * i + u] = a[g];
            }
#else /* the units of an unpack together, two FMA chains per q-head: even and odd tokens */
            float16 a[G][UNITS], a2[G][UNITS];
            SKV_UNROLL for (uint g = 0; g < G; g++)
                SKV_UNROLL for (uint u = 0; u < UNITS; u++)
                    a[g][u] = acc[g][UNITS * i + u], a2[g][u] = (float16)(0.0f);
            uint j = 0;
            for (; j + 1 < n; j += 2) {
                float16 q0[UNITS], q1[UNITS];
                value_units(value_row(page, slot0 + j), i, q0);
                value_units(value_row(page, slot0 + j + 1), i, q1);
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    SKV_UNROLL for (uint u = 0; u < UNITS; u++) {
                        a[g][u] = fma((float16)(ps[j][g][k]), q0[u], a[g][u]);
                        a2[g][u] = fma((float16)(ps[j + 1][g][k]), q1[u], a2[g][u]);
                    }
            }
            if (j < n) {
                float16 q0[UNITS];
                value_units(value_row(page, slot0 + j), i, q0);
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    SKV_UNROLL for (uint u = 0; u < UNITS; u++)
                        a[g][u] = fma((float16)(ps[j][g][k]), q0[u], a[g][u]);
            }
            SKV_UNROLL for (uint g = 0; g < G; g++)
                SKV_UNROLL for (uint u = 0; u < UNITS; u++)
                    acc[g][UNITS * i + u] = a[g][u] + a2[g][u];
#endif
        }
#else
        /* values: each accumulator vector is loaded and stored once per block */
        for (uint i = 0; i < D / 8; i++) { /* two FMA chains per q-head: even and odd tokens */
            float8 a[G], a2[G];
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[g] = acc[g][i], a2[g] = (float8)(0.0f);
            __global const half *vp = (__global const half *)page + P * D + slot0 * D;
            uint j = 0;
            for (; j + 1 < n; j += 2) {
                const float8 v0 = vload_half8(i, vp + j * D), v1 = vload_half8(i, vp + (j + 1) * D);
                SKV_UNROLL for (uint g = 0; g < G; g++) {
                    a[g] = fma((float8)(p[g][j]), v0, a[g]);
                    a2[g] = fma((float8)(p[g][j + 1]), v1, a2[g]);
                }
            }
            if (j < n) {
                const float8 v0 = vload_half8(i, vp + j * D);
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[g] = fma((float8)(p[g][j]), v0, a[g]);
            }
            SKV_UNROLL for (uint g = 0; g < G; g++)
                acc[g][i] = a[g] + a2[g];
        }
#endif
    }

    __global float *out = partials + ((size_t)bh * total_chunks + chunk_offset + chunk) * PARTIAL_FLOATS;
    for (uint g = 0; g < G; g++) {
        out[g] = m[g];
        out[G + g] = l[g];
#ifdef ADA
        for (uint i = 0; i < D / 16 / UNITS; i++) {
            const float bs = bias[g][16 * UNITS * i / VG];
#if UNITS == 2 /* even and odd dims of a 32-dim block, interleaved back */
            const float16 e = acc[g][2 * i] + bs, o = acc[g][2 * i + 1] + bs;
            vstore16((float16)(e.s0, o.s0, e.s1, o.s1, e.s2, o.s2, e.s3, o.s3, e.s4, o.s4, e.s5, o.s5, e.s6, o.s6,
                               e.s7, o.s7),
                     2 * i, out + 2 * G + g * D);
            vstore16((float16)(e.s8, o.s8, e.s9, o.s9, e.sa, o.sa, e.sb, o.sb, e.sc, o.sc, e.sd, o.sd, e.se, o.se,
                               e.sf, o.sf),
                     2 * i + 1, out + 2 * G + g * D);
#else
            vstore16(acc[g][i] + (float16)(bs), i, out + 2 * G + g * D);
#endif
        }
#else
        for (uint i = 0; i < D / 8; i++)
            vstore8(acc[g][i], i, out + 2 * G + g * D);
#endif
    }
}
#endif /* DECODE_CPU */

/* Observed attention (H2O): adds each token's attention probability, averaged over the
 * GQA group, to acc[h][position] of sequence b, from the kept logits and the merged
 * (max, sum) per q-head (decode_merge's ml). One work-item per (token, kv-head). */
__kernel void observe(SKV_POOL_PARAMS, __global const uint *indptr, __global const uint *indices,
                      __global const uint *lens, uint H, uint b, __global const float *logits, uint logit_stride,
                      __global const float *ml, __global float *acc, uint acc_cap)
{
    const uint t = get_global_id(0), h = get_global_id(1), bh = b * H + h;
    if (t >= lens[bh])
        return;
    __global const uchar *page = SKV_PAGE(indices[indptr[bh] + t / P], PAGE_BYTES);
    const int position = ((__global const int *)(page + PAGE_BYTES - 4 * P))[t % P];
    float p = 0.0f;
    for (uint g = 0; g < G; g++) {
        const uint bq = bh * G + g;
        p += exp(logits[((size_t)bh * G + g) * logit_stride + t] - ml[2 * bq]) / ml[2 * bq + 1];
    }
    if (position >= 0 && (uint)position < acc_cap)
        acc[(size_t)h * acc_cap + position] += p / (float)G;
}
