/* Decode's ADA tier access (the interface is in decode.h): keys as packed pair codes
 * [KW][P] + fp16 norms, logits from the codes alone, n * kscale * sum_j J[j][code_j][g]
 * with J the per-query joint table R[r] T[j][c] where it is small, else R[r_j] T[j][c_j][g]
 * (cl/ada_query.cl writes the tables, cl/layout.h has their layouts): a pair's code is a
 * table index, never a coordinate, and no dense key is ever formed. Values are VB-bit
 * codes with a (scale, min) per group of VG, dequantised on the fly. */

#define VBYTES SKV_ADA_VROW_BYTES(D, VB, VG)
#define PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG)
#define VMASK ((1u << VB) - 1u)
#define NC (NR * NS) /* pair codes */

static inline __global const uchar *value_row(__global const uchar *page, uint slot)
{
    return page + SKV_ADA_VALUES_OFFSET(P, KW) + slot * VBYTES;
}

static inline __global const half *norms(__global const uchar *page)
{
    return (__global const half *)(page + SKV_ADA_NORMS_OFFSET(P, KW));
}

#ifndef DECODE_CPU
#define TIER_LOCAL_QUERY 0
#define TIER_TABLE_FLOATS ((D / 2) * SKV_SLOT_ROW(RB, AB) * G) /* by slot */

/* Pair code j (radius in the low RB bits) from a slot's key words. */
#define PAIR_CODE(words, j)                                                                \
    ((((words)[((j) * (RB + AB)) / 32] >> (((j) * (RB + AB)) % 32)) |                      \
      ((((j) * (RB + AB)) % 32 + RB + AB > 32) ? (words)[((j) * (RB + AB)) / 32 + 1]       \
                                                      << (32 - ((j) * (RB + AB)) % 32)     \
                                                : 0u)) &                                   \
     ((1u << (RB + AB)) - 1u))
#define G4 (G / 4)

/* The G logits of one slot, dot_g[g] = n * sum_j J[j][code_j][g] (tables by slot: the G
 * entries of a code are adjacent, read 4 at a time where G allows). */
__attribute__((always_inline)) static inline void slot_logits(__global const uchar *page, uint slot,
                                                              __local const float *qs, __global const float *tab,
                                                              __constant float *params, float *dot_g)
{
    (void)qs;
    __global const uint *kw = (__global const uint *)page + slot;
    uint words[KW + 1];
    SKV_UNROLL for (uint w = 0; w < KW; w++)
        words[w] = kw[w * P];
    words[KW] = 0;
    float4 a4[G4 > 0 ? G4 : 1];
    float as[G];
    SKV_UNROLL for (uint g = 0; g < G4; g++)
        a4[g] = (float4)(0.0f);
    SKV_UNROLL for (uint g = 4 * G4; g < G; g++)
        as[g] = 0.0f;
    SKV_UNROLL for (uint j = 0; j < D / 2; j++) {
        const uint code = PAIR_CODE(words, j);
        const float r = ADA_JOINT ? 1.0f : params[code & (NR - 1)];
        __global const float *t = tab + (ADA_JOINT ? j * NC + code : j * NS + (code >> RB)) * G;
        SKV_UNROLL for (uint g = 0; g < G4; g++)
            a4[g] += r * vload4(g, t);
        SKV_UNROLL for (uint g = 4 * G4; g < G; g++)
            as[g] += r * t[g];
    }
    SKV_UNROLL for (uint g = 0; g < G4; g++)
        vstore4(a4[g], g, dot_g);
    SKV_UNROLL for (uint g = 4 * G4; g < G; g++)
        dot_g[g] = as[g];
    const float n = vload_half(slot, norms(page));
    SKV_UNROLL for (uint g = 0; g < G; g++)
        dot_g[g] *= n;
}

static inline float value_at(__global const uchar *vo, uint i)
{
    __global const half *prm = (__global const half *)(vo + D * VB / 8);
    const uint q = (vo[i * VB / 8] >> (i * VB % 8)) & VMASK;
    return vload_half(2 * (i / VG) + 1, prm) + (float)q * vload_half(2 * (i / VG), prm);
}

static inline float2 load_v2(__global const uchar *page, uint slot, uint pair)
{
    __global const uchar *vo = value_row(page, slot);
    return (float2)(value_at(vo, 2 * pair), value_at(vo, 2 * pair + 1));
}

#else /* DECODE_CPU */
/* Blocks of LANES slots, a slot per vector lane. */
#define TB LANES
#define floatTB floatL
#define intTB intL
#define vloadTB vloadL
#define vstoreTB vstoreL
#define TB_LANES LANE_IDS
/* Values: accumulate a code unpack's units one at a time with one FMA chain per q-head
 * (VSPLIT: G q-heads' accumulators fit 16 vector registers) or together with two chains
 * (32 registers). */
#ifndef VSPLIT
#define VSPLIT (LANES < 16)
#endif
/* Logits: independent sums per q-head, interleaved over pairs (16 registers hold one set
 * of G accumulators and the lookup state, 32 hold two) */
#ifndef LCHAINS
#define LCHAINS (LANES < 16 ? 1 : 2)
#endif

/* t[i] for i < n <= 16, the table given as pieces of LANES floats (a constant n, so the
 * loop over pieces unrolls and vanishes where n <= LANES) */
__attribute__((always_inline)) static inline floatL lut_pieces(const floatL *t, uint n, uintL i)
{
    const uintL lo = i & (uintL)(LANES - 1), hi = i >> (uintL)(LANES_LOG2);
    floatL r = lut(t[0], lo);
    SKV_UNROLL for (uint k = 1; k < 16 / LANES; k++)
        if (k * LANES < n)
            r = select(r, lut(t[k], lo), hi == (uintL)(k));
    return r;
}

/* row[i] for i < LANE_USED, a lane table row of LANE_N = 16 floats */
__attribute__((always_inline)) static inline floatL lane_lookup(__global const float *row, uintL i)
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

typedef struct cpu_query {
    __global const float *tab; /* this (sequence, kv-head)'s tables by lane */
    float scale;
} cpu_query;

__attribute__((always_inline)) static inline void query_init(cpu_query *cq, __global const uchar *q, ulong q_offset,
                                                             uint q_dtype, uint H, uint b, uint h, float scale,
                                                             __global const float *tables, uint bh)
{
    (void)q, (void)q_offset, (void)q_dtype, (void)H, (void)b, (void)h;
    cq->tab = tables + (size_t)bh * ((D / 2) * G * LANE_N);
    cq->scale = scale;
}

/* The logits of slots slot0 .. slot0 + LANES - 1 of a page for the G q-heads, times the
 * scale: s[g][i] = scale * n_i * sum_j J[j][g][code_ij] (LANE_JOINT), else
 * scale * n_i * sum_j R[r_ij] T[j][g][c_ij]; LCHAINS interleaved sums over j per q-head.
 * Slots past the page's fill are read, then ignored (the schedule masks them). */
__attribute__((always_inline)) static inline void block_logits(__global const uchar *page, uint slot0, uint n,
                                                               const cpu_query *cq, __constant float *params,
                                                               floatL *s)
{
    (void)n;
    __global const uint *kw = (__global const uint *)page + slot0;
    floatL a[LCHAINS][G];
    SKV_UNROLL for (uint c = 0; c < LCHAINS; c++)
        SKV_UNROLL for (uint g = 0; g < G; g++)
            a[c][g] = (floatL)(0.0f);
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
        __global const float *rt = cq->tab + run * PC * G * LANE_N;
        SKV_UNROLL for (uint jj = 0; jj < PC; jj++) {
            const uint bit = jj * (RB + AB), wi = bit / 32, sh = bit % 32;
            uintL code = vloadL(0, rw + wi * P) >> (uintL)(sh);
            if (sh + RB + AB > 32)
                code |= vloadL(0, rw + (wi + 1) * P) << (uintL)(32 - sh);
            __global const float *row = rt + jj * G * LANE_N;
#if LANE_JOINT
            code &= (uintL)(NC - 1);
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[jj % LCHAINS][g] += lane_lookup(row + g * LANE_N, code);
#else
            floatL r = lut_pieces(rrow, NR, code & (uintL)(NR - 1));
            code >>= (uintL)(RB);
#if LANE_HALF /* angles of the second half: T negated, so R takes the sign */
            r = as_floatL(as_uintL(r) ^ ((code & (uintL)(NS / 2)) << (uintL)(32 - AB)));
#endif
            code &= (uintL)(LANE_USED - 1);
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[jj % LCHAINS][g] = fma(r, lane_lookup(row + g * LANE_N, code), a[jj % LCHAINS][g]);
#endif
        }
    }
    const floatL nv = vload_halfL(0, norms(page) + slot0) * cq->scale;
    SKV_UNROLL for (uint g = 0; g < G; g++) {
        floatL sum = a[0][g];
        SKV_UNROLL for (uint c = 1; c < LCHAINS; c++)
            sum += a[c][g];
        s[g] = sum * nv;
    }
}

/* Value accumulators are units of 16 dims; one unpack of a value row's codes yields
 * UNITS of them (value rows start 8-byte aligned, so whole-word loads). VB = 4 unpacks a
 * 32-dim block (16 bytes) at once into its low nibbles, the even dims, and its high
 * nibbles, the odd dims: unit 2b holds block b's even dims, 2b + 1 its odd ones
 * (acc_store puts them back in order). VB = 8, 2: unit i is dims 16i .. 16i + 15. */
#if VB == 4
#define UNITS 2
#else
#define UNITS 1
#endif
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

__attribute__((always_inline)) static inline void value_units(__global const uchar *vo, uint i, float16 *u)
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
__attribute__((always_inline)) static inline float16 value_unit(__global const uchar *vo, uint i, uint u)
{
#if VB == 4
    __global const ulong *w = (__global const ulong *)vo;
    const uint16 x = convert_uint16(as_uchar16((ulong2)(w[2 * i], w[2 * i + 1])));
    return convert_float16(u ? x >> (uint16)(4) : x & (uint16)(15));
#else
    (void)u;
    float16 q[1];
    value_units(vo, i, q);
    return q[0];
#endif
}

/* Values in the code domain: v holds sum p sc q, bias sum p mn per group. */
typedef struct cpu_acc {
    float16 v[D / 16];
    float bias[GROUPS];
} cpu_acc;

__attribute__((always_inline)) static inline void acc_zero(cpu_acc *a)
{
    for (uint i = 0; i < D / 16; i++)
        a->v[i] = (float16)(0.0f);
    for (uint k = 0; k < GROUPS; k++)
        a->bias[k] = 0.0f;
}

__attribute__((always_inline)) static inline void acc_scale(cpu_acc *a, float alpha)
{
    for (uint i = 0; i < D / 16; i++)
        a->v[i] *= alpha;
    for (uint k = 0; k < GROUPS; k++)
        a->bias[k] *= alpha;
}

/* acc[g] += sum_j p[g][j] v_j over the block's n slots: per (slot, group) the scale
 * folds into p and p mn goes to the group's bias, so 16 dims cost G FMAs and a share of
 * a code unpack. */
__attribute__((always_inline)) static inline void block_values(__global const uchar *page, uint slot0, uint n,
                                                               float p[G][TB], cpu_acc *acc)
{
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
                acc[g].bias[k] = fma(p[g][j], mn[k], acc[g].bias[k]);
            }
    }
    for (uint i = 0; i < D / 16 / UNITS; i++) {
        const uint k = 16 * UNITS * i / VG; /* the units' value group */
#if VSPLIT /* a unit at a time, one FMA chain per q-head */
        _Pragma("unroll 1") for (uint u = 0; u < UNITS; u++) {
            float16 a[G];
            SKV_UNROLL for (uint g = 0; g < G; g++)
                a[g] = acc[g].v[UNITS * i + u];
            for (uint j = 0; j < n; j++) {
                const float16 q0 = value_unit(value_row(page, slot0 + j), i, u);
                SKV_UNROLL for (uint g = 0; g < G; g++)
                    a[g] = fma((float16)(ps[j][g][k]), q0, a[g]);
            }
            SKV_UNROLL for (uint g = 0; g < G; g++)
                acc[g].v[UNITS * i + u] = a[g];
        }
#else /* the units of an unpack together, two FMA chains per q-head: even and odd slots */
        float16 a[G][UNITS], a2[G][UNITS];
        SKV_UNROLL for (uint g = 0; g < G; g++)
            SKV_UNROLL for (uint u = 0; u < UNITS; u++)
                a[g][u] = acc[g].v[UNITS * i + u], a2[g][u] = (float16)(0.0f);
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
                acc[g].v[UNITS * i + u] = a[g][u] + a2[g][u];
#endif
    }
}

__attribute__((always_inline)) static inline void acc_store(const cpu_acc *a, __global float *out)
{
    for (uint i = 0; i < D / 16 / UNITS; i++) {
        const float bs = a->bias[16 * UNITS * i / VG];
#if UNITS == 2 /* even and odd dims of a 32-dim block, interleaved back */
        const float16 e = a->v[2 * i] + bs, o = a->v[2 * i + 1] + bs;
        vstore16((float16)(e.s0, o.s0, e.s1, o.s1, e.s2, o.s2, e.s3, o.s3, e.s4, o.s4, e.s5, o.s5, e.s6, o.s6, e.s7,
                           o.s7),
                 2 * i, out);
        vstore16((float16)(e.s8, o.s8, e.s9, o.s9, e.sa, o.sa, e.sb, o.sb, e.sc, o.sc, e.sd, o.sd, e.se, o.se, e.sf,
                           o.sf),
                 2 * i + 1, out);
#else
        vstore16(a->v[i] + (float16)(bs), i, out);
#endif
    }
}
#endif /* DECODE_CPU */
