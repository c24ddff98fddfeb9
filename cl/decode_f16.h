/* Decode's F16 tier access (the interface is in decode.h): keys [D/8][P][8] halves,
 * logits q.k; values [P][D] halves (cl/layout.h). */

#define PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)

#ifndef DECODE_CPU
#define TIER_LOCAL_QUERY 1
#define TIER_TABLE_FLOATS 0

/* The G logits of one slot, the group's queries in local memory qs[G][D]. */
__attribute__((always_inline)) static inline void slot_logits(__global const uchar *page, uint slot, __local const float *qs,
                                                       __global const float *tab, __constant float *params,
                                                       float *dot_g)
{
    (void)tab;
    (void)params;
    __global const half *kp = (__global const half *)page + slot * 8;
    for (uint g = 0; g < G; g++)
        dot_g[g] = 0.0f;
    for (uint i = 0; i < D / 8; i++) {
        float8 k8 = vload_half8(0, kp + i * P * 8);
        for (uint g = 0; g < G; g++) {
            __local const float *qg = qs + g * D + i * 8;
            dot_g[g] += dot(k8.lo, vload4(0, qg)) + dot(k8.hi, vload4(1, qg));
        }
    }
}

static inline float2 load_v2(__global const uchar *page, uint slot, uint pair)
{
    return vload_half2(pair, (__global const half *)(page + SKV_F16_VALUES_OFFSET(D, P)) + slot * D);
}

#else /* DECODE_CPU */
/* Blocks of 8 slots: each key row's 16-byte pieces of KB slots are one contiguous run,
 * read in order, and KB * G vector accumulators fit in registers. */
#define TB 8
#define floatTB float8
#define intTB int8
#define vloadTB vload8
#define vstoreTB vstore8
#define TB_LANES (int8)(0, 1, 2, 3, 4, 5, 6, 7)
#ifndef KB /* slots per key pass (skv_decode_params.f16_slots; host/tuning.c has this default) */
#define KB (G >= 16 ? 1 : (G >= 8 ? 2 : (G >= 4 ? 4 : 8)))
#endif

typedef struct cpu_query {
    float8 q[G][D / 8]; /* the group's queries times the logit scale */
} cpu_query;

__attribute__((always_inline)) static inline void query_init(cpu_query *cq, __global const uchar *q, ulong q_offset,
                                                      uint q_dtype, uint H, uint b, uint h, float scale,
                                                      __global const float *tables, uint bh)
{
    (void)tables;
    (void)bh;
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
            cq->q[g][i] = x * scale; /* fold the logit scale into the query */
        }
}

/* The scaled logits of slots slot0 .. slot0 + n - 1 (n <= TB; lanes past n are 0). */
__attribute__((always_inline)) static inline void block_logits(__global const uchar *page, uint slot0, uint n,
                                                        const cpu_query *cq, __constant float *params, floatTB *s)
{
    (void)params;
    float sl[G][TB];
    if (n < TB) /* lanes past the fill: defined, then masked by the schedule */
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
                    a[j][g] = fma(k8, cq->q[g][i], a[j][g]);
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
}

typedef struct cpu_acc {
    float8 v[D / 8];
} cpu_acc;

__attribute__((always_inline)) static inline void acc_zero(cpu_acc *a)
{
    for (uint i = 0; i < D / 8; i++)
        a->v[i] = (float8)(0.0f);
}

__attribute__((always_inline)) static inline void acc_scale(cpu_acc *a, float alpha)
{
    for (uint i = 0; i < D / 8; i++)
        a->v[i] *= alpha;
}

/* acc[g] += sum_j p[g][j] v_j over the block's n slots; each accumulator vector is
 * loaded and stored once per block, two FMA chains per q-head (even and odd slots). */
__attribute__((always_inline)) static inline void block_values(__global const uchar *page, uint slot0, uint n,
                                                        float p[G][TB], cpu_acc *acc)
{
    __global const half *vp = (__global const half *)(page + SKV_F16_VALUES_OFFSET(D, P)) + slot0 * D;
    for (uint i = 0; i < D / 8; i++) {
        float8 a[G], a2[G];
        SKV_UNROLL for (uint g = 0; g < G; g++)
            a[g] = acc[g].v[i], a2[g] = (float8)(0.0f);
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
            acc[g].v[i] = a[g] + a2[g];
    }
}

__attribute__((always_inline)) static inline void acc_store(const cpu_acc *a, __global float *out)
{
    for (uint i = 0; i < D / 8; i++)
        vstore8(a->v[i], i, out);
}
#endif /* DECODE_CPU */
