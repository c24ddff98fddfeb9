/* Encodes tokens from F16 pages into an ADA tier's pages (DESIGN.md §4-5): keys as
 * packed pair codes (radius in the low bits) + an fp16 norm, values as quantised groups,
 * and the slot's position. One work-item per (token, kv-head) job. Every decision is
 * the C reference's (src/ada.c, src/value_quant.c) in the same order and rounding, so the
 * codes are bit-identical; the reference page layout is skv_ref_ada_page_write.
 * Build defines: D, P, RB, AB (radius/angle bits), KW (key words), VB, VG (value bits
 * and group). `params` is the tier's table (host/ada.c: skvi_ada_pack_params). */
#pragma OPENCL FP_CONTRACT OFF

#define SRC_PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)
#define VBYTES SKV_ADA_VROW_BYTES(D, VB, VG)
#define DST_PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG)

static inline ushort norm_code(float n2)
{
    ushort h = skv_f32_to_f16_rte(sqrt(n2));
    if (h >= 0x7BFF)
        return 0x7BFF;
    for (;;) {
        float lo = skv_f16_to_f32(h), hi = skv_f16_to_f32((ushort)(h + 1));
        float mid = 0.5f * (lo + hi), mid2 = mid * mid;
        if (n2 > mid2 || (n2 == mid2 && (h & 1)))
            h++;
        else
            break;
    }
    while (h > 0) {
        float lo = skv_f16_to_f32((ushort)(h - 1)), hi = skv_f16_to_f32(h);
        float mid = 0.5f * (lo + hi), mid2 = mid * mid;
        if (n2 < mid2 || (n2 == mid2 && (h & 1)))
            h--;
        else
            break;
    }
    return h;
}

/* Encodes one token (key k[D], values v[D] as floats) into slot ds of an ADA page. */
static inline void encode_slot(const float *k, const float *v, int position, __global const char *sg,
                        __constant float *params, __global uchar *dst, uint ds)
{
    /* y = H diag(s) k / sqrt(d): the reference's butterflies, in its order */
    float y[D];
    for (uint i = 0; i < D; i++)
        y[i] = sg[i] < 0 ? -k[i] : k[i];
    skv_butterflies(y, D);
    float n2 = 0.0f;
    for (uint i = 0; i < D; i++) {
        y[i] = y[i] * params[PRM_SCALE];
        n2 = n2 + y[i] * y[i];
    }
    const ushort nh = norm_code(n2);
    const float nf = skv_f16_to_f32(nh), nf2 = nf * nf;

    uint words[KW];
    for (uint w = 0; w < KW; w++)
        words[w] = 0;
    for (uint j = 0; j < D / 2; j++) {
        const float x0 = y[2 * j], x1 = y[2 * j + 1];
        const float lhs = (x0 * x0 + x1 * x1) * (float)(D / 2);
        uint r = 0;
        for (uint kk = 0; kk + 1 < NR; kk++)
            r += lhs >= params[PRM_BOUND_SQ + kk] * nf2;
        float u = -x0, vv = -x1;
        uint base = 0;
        if (!(vv > 0.0f || (vv == 0.0f && u >= 0.0f))) {
            u = x0;
            vv = x1;
            base = NS / 2;
        }
        uint c = base;
        for (uint kk = 1; kk < NS / 2; kk++) {
            float cross = params[PRM_BCOS + kk] * vv - params[PRM_BSIN + kk] * u;
            c += cross >= 0.0f;
        }
        const uint code = r | (c << RB), bit = j * (RB + AB), w = bit / 32, sh = bit % 32;
        words[w] |= code << sh;
        if (sh + RB + AB > 32)
            words[w + 1] |= code >> (32 - sh);
    }
    __global uint *kw = (__global uint *)dst;
    for (uint w = 0; w < KW; w++)
        kw[w * P + ds] = words[w]; /* structure of arrays: word w of every slot together */
    ((__global ushort *)(dst + SKV_ADA_NORMS_OFFSET(P, KW)))[ds] = nh;

    /* values: groups of VG, codes of VB bits, then (scale, min) per group */
    __global uchar *vo = dst + SKV_ADA_VALUES_OFFSET(P, KW) + ds * VBYTES;
    __global ushort *prm = (__global ushort *)(vo + D * VB / 8);
    const uint levels = (1u << VB) - 1u;
    for (uint g0 = 0; g0 < D; g0 += VG) {
        float mn = v[g0], mx = mn;
        for (uint i = g0 + 1; i < g0 + VG; i++) {
            mn = v[i] < mn ? v[i] : mn;
            mx = v[i] > mx ? v[i] : mx;
        }
        const ushort mn_h = skv_f32_to_f16_dir(mn, 0);
        const float mnf = skv_f16_to_f32(mn_h);
        const ushort sc_h = skv_f32_to_f16_dir((mx - mnf) * (1.0f / (float)levels), 1);
        const float scf = skv_f16_to_f32(sc_h), inv = scf > 0.0f ? 1.0f / scf : 0.0f;
        uint acc = 0, nbits = 0;
        for (uint i = g0; i < g0 + VG; i++) {
            const float x = v[i];
            int q = 0;
            if (scf != 0.0f) {
                float e = (x - mnf) * inv; /* an estimate; the comparisons decide */
                q = e <= 0.0f ? 0 : e >= (float)levels ? (int)levels : (int)(e + 0.5f);
                while (q < (int)levels && x >= mnf + ((float)(q + 1) - 0.5f) * scf)
                    q++;
                while (q > 0 && x < mnf + ((float)q - 0.5f) * scf)
                    q--;
            }
            acc |= (uint)q << nbits;
            nbits += VB;
            if (nbits == 8) {
                vo[i * VB / 8] = (uchar)acc;
                acc = 0;
                nbits = 0;
            }
        }
        prm[2 * (g0 / VG)] = sc_h;
        prm[2 * (g0 / VG) + 1] = mn_h;
    }
    ((__global int *)(dst + SKV_POSITIONS_OFFSET(DST_PAGE_BYTES, P)))[ds] = position;
}

__kernel void ada_encode(SKV_POOL_PARAMS_P(src), SKV_POOL_PARAMS_P(dst), __global const uint4 *jobs,
                         __global const char *signs, __constant float *params)
{
    const uint4 job = jobs[get_global_id(0)]; /* src page, src slot | dst slot << 16, dst page, layer * H + head */
    const uint ss = job.y & 0xFFFFu, ds = job.y >> 16;
    __global const half *src = (__global const half *)SKV_PAGE_P(src, job.x, SRC_PAGE_BYTES);
    float k[D], v[D];
    for (uint i = 0; i < D; i++) {
        k[i] = vload_half(((i / 8) * P + ss) * 8 + i % 8, src);
        v[i] = vload_half(P * D + ss * D + i, src);
    }
    encode_slot(k, v, ((__global const int *)((__global const uchar *)src + SKV_POSITIONS_OFFSET(SRC_PAGE_BYTES, P)))[ss], signs + (size_t)job.w * D,
                params, SKV_PAGE_P(dst, job.z, DST_PAGE_BYTES), ds);
}

#ifdef SRC_RB
/* Moves a token from a higher ADA tier (SRC_*) to this lower one (RDR never moves up):
 * the source key and values are decoded exactly as skv_ref_ada_decode_key and
 * skv_ref_value_decode do, then encoded as ada_encode would. */
#define SRC_NR (1 << SRC_RB)
#define SRC_NS (1 << SRC_AB)
#define SRC_VBYTES SKV_ADA_VROW_BYTES(D, SRC_VB, SRC_VG)
#define SRC_ADA_PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, SRC_KW, SRC_VB, SRC_VG)
#define SRC_PRM_CCOS (SRC_NR + SRC_NR - 1 + SRC_NS)
#define SRC_PRM_CSIN (SRC_PRM_CCOS + SRC_NS)
#define SRC_PRM_SCALE (SRC_PRM_CSIN + SRC_NS)

__kernel void ada_transcode(SKV_POOL_PARAMS_P(src), SKV_POOL_PARAMS_P(dst), __global const uint4 *jobs,
                            __global const char *signs, __constant float *src_params, __constant float *params)
{
    const uint4 job = jobs[get_global_id(0)];
    const uint ss = job.y & 0xFFFFu, ds = job.y >> 16;
    __global const uchar *page = SKV_PAGE_P(src, job.x, SRC_ADA_PAGE_BYTES);
    __global const char *sg = signs + (size_t)job.w * D;
    __global const uint *kw = (__global const uint *)page + ss;
    const float rho = skv_f16_to_f32(((__global const ushort *)(page + SKV_ADA_NORMS_OFFSET(P, SRC_KW)))[ss]) * src_params[SRC_PRM_SCALE + 1];
    float y[D], k[D], v[D];
    for (uint j = 0; j < D / 2; j++) {
        const uint code = skv_pair_code(kw, P, j, SRC_RB + SRC_AB);
        const float r = src_params[code & (SRC_NR - 1)] * rho;
        y[2 * j] = r * src_params[SRC_PRM_CCOS + (code >> SRC_RB)];
        y[2 * j + 1] = r * src_params[SRC_PRM_CSIN + (code >> SRC_RB)];
    }
    skv_butterflies(y, D); /* the inverse transform: butterflies, scale, then signs */
    for (uint i = 0; i < D; i++) {
        float x = y[i] * src_params[SRC_PRM_SCALE];
        k[i] = sg[i] < 0 ? -x : x;
    }
    __global const uchar *vo = page + SKV_ADA_VALUES_OFFSET(P, SRC_KW) + ss * SRC_VBYTES;
    __global const ushort *vp = (__global const ushort *)(vo + D * SRC_VB / 8);
    for (uint i = 0; i < D; i++) {
        const uint q = (vo[i * SRC_VB / 8] >> (i * SRC_VB % 8)) & ((1u << SRC_VB) - 1u);
        v[i] = skv_f16_to_f32(vp[2 * (i / SRC_VG) + 1]) + (float)q * skv_f16_to_f32(vp[2 * (i / SRC_VG)]);
    }
    const int position = ((__global const int *)(page + SKV_POSITIONS_OFFSET(SRC_ADA_PAGE_BYTES, P)))[ss];
    encode_slot(k, v, position, sg, params, SKV_PAGE_P(dst, job.z, DST_PAGE_BYTES), ds);
}
#endif
