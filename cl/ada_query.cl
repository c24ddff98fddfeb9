/* ADA query tables: what decode (cl/decode.cl) reads to take logits from the codes
 * alone. Build defines: D, RB, AB (the tier's radius/angle bits) and LANE_W (the lanes
 * of the decode variant the tables serve; cl/common.h). `params` is the tier's table. */

/* Per-query lookup tables for decode: for q-head g of kv-head h of sequence b,
 * q' = H diag(s) q / sqrt(d), T[j][c] = q'_2j cos(phi_c) + q'_2j+1 sin(phi_c) (the C
 * reference skv_ref_ada_query_table), in one of two layouts (cl/common.h):
 *   by slot (decode_gpu, lanes = 0): joined with the radius codebook over the whole pair
 *     code, tables[b*H + h][j][r | c << RB][g] = R[r] * T[j][c], the G q-heads side by
 *     side, so a pair costs one lookup of G floats (ADA_JOINT; else [j][c][g] = T[j][c]
 *     and decode multiplies by R[r]);
 *   by lane (decode_cpu, lanes = 1): tables[b*H + h][j][g][LANE_N], one q-head's entries
 *     side by side (R[r] T[j][c] at r | c << RB when LANE_JOINT, else T[j][c] for the
 *     first LANE_USED angles; zeros past them), so LANE_W slots' entries are one vector
 *     permute of a LANE_W-entry piece of the row (build define LANE_W: decode's lanes).
 * One work-item per (sequence, q-head). */
__kernel void ada_query(__global const uchar *q, ulong q_offset, uint q_dtype, __global const char *signs,
                        __constant float *params, uint layer, uint H, uint G, uint lanes, __global float *tables)
{
    const uint bq = get_global_id(0); /* sequence * H * G + q-head */
    const uint qh = bq % (H * G), b = bq / (H * G), h = qh / G, g = qh % G;
    __global const char *sg = signs + ((size_t)layer * H + h) * D;
    float y[D];
    for (uint i = 0; i < D; i++) {
        float x = SKV_LOAD_AS_FLOAT(q_dtype, q + q_offset, (size_t)bq * D + i);
        y[i] = sg[i] < 0 ? -x : x;
    }
    skv_butterflies(y, D);
    const float sc = params[PRM_SCALE];
    const size_t bh = (size_t)b * H + h;
    for (uint j = 0; j < D / 2; j++) {
        const float y0 = y[2 * j] * sc, y1 = y[2 * j + 1] * sc;
        __global float *row = lanes ? tables + ((bh * (D / 2) + j) * G + g) * LANE_N : NULL;
        __global float *t = lanes ? NULL : tables + bh * (D / 2) * (ADA_JOINT ? NR * NS : NS) * G + g;
        for (uint c = 0; c < NS; c++) {
            const float tc = y0 * params[PRM_CCOS + c] + y1 * params[PRM_CSIN + c];
            if (lanes && LANE_JOINT)
                for (uint r = 0; r < NR; r++)
                    row[r | c << RB] = params[r] * tc;
            else if (lanes) {
                if (c < LANE_USED) /* LANE_HALF: the second half is the first negated */
                    row[c] = tc;
            } else if (ADA_JOINT)
                for (uint r = 0; r < NR; r++)
                    t[((j * NS + c) * NR + r) * G] = params[r] * tc; /* code r | c << RB */
            else
                t[(j * NS + c) * G] = tc;
        }
        for (uint e = LANE_USED; lanes && e < LANE_N; e++)
            row[e] = 0.0f;
    }
}
