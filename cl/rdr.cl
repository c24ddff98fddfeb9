/* RDR's parallel step: for a multiplier lambda every candidate picks
 * argmin_t u D_t + lambda R_t (src/rdr.c: skv_rdr_option, the same float operations in
 * the same order, so the choices are identical on every device), and each work-group
 * counts its choices per option for the host's bisection. One work-item per candidate.
 * Many problems at once (every (layer, kv-head) of a compression, each with its own
 * lambda): problem p's candidates start at first[p], a multiple of the work-group size,
 * so a work-group belongs to one problem, group_problem[g]; a problem whose lambda is
 * negative is finished and its work-groups write nothing.
 * prm: mse_k[4], mse_v[4], token_bytes[4]; allowed tiers as a bit mask. */
#pragma OPENCL FP_CONTRACT OFF

__kernel void rdr_choose(__global const float *u, __global const float *energy, __global const uchar *current,
                         __global const uint *first, __global const uint *n, __global const uint *group_problem,
                         __global const float *lambdas, __constant float *prm, uint tiers, __global uchar *choice,
                         __global uint *group_counts)
{
    const uint g = get_group_id(0), p = group_problem[g];
    const float lambda = lambdas[p];
    if (lambda < 0.0f) /* the same for the whole work-group: no barrier is skipped by part of it */
        return;
    __local uint counts[5];
    const uint lid = get_local_id(0), i = get_global_id(0);
    if (lid < 5)
        counts[lid] = 0;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (i - first[p] < n[p]) {
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
        group_counts[g * 5 + lid] = counts[lid];
}
