/* RDR's parallel step: for a multiplier lambda every candidate picks
 * argmin_t u D_t + lambda R_t (src/rdr.c: skv_rdr_option, the same float operations in
 * the same order, so the choices are identical on every device), and each work-group
 * counts its choices per option for the host's bisection. One work-item per candidate.
 * prm: mse_k[4], mse_v[4], token_bytes[4]; allowed tiers as a bit mask. */
#pragma OPENCL FP_CONTRACT OFF

__kernel void rdr_choose(__global const float *u, __global const float *energy, __global const uchar *current,
                         uint n, float lambda, __constant float *prm, uint tiers, __global uchar *choice,
                         __global uint *group_counts)
{
    __local uint counts[5];
    const uint lid = get_local_id(0), i = get_global_id(0);
    if (lid < 5)
        counts[lid] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (i < n) {
        const float ui = u[i], e = energy[i];
        const uint cur = current[i];
        uint best = 4;
        float best_cost = ui; /* drop */
        for (uint t = 0; t < 4; t++) { /* in order of quality: ties keep the better */
            if (!((tiers >> t) & 1u) || !(cur == 0 || t >= cur)) /* never up from a lossy code */
                continue;
            const float d = (prm[t] * e + prm[4 + t]) * ui;
            const float cost = d + lambda * prm[8 + t];
            if (best == 4 ? cost <= best_cost : cost < best_cost) {
                best_cost = cost;
                best = t;
            }
        }
        choice[i] = (uchar)best;
        atomic_inc(&counts[best]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < 5)
        group_counts[get_group_id(0) * 5 + lid] = counts[lid];
}
