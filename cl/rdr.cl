/* RDR's solver on the device: the whole search of src/rdr.c (skv_rdr_search) for many
 * problems in one launch, one work-group per problem (every (layer, kv-head) of a
 * compression). For each multiplier lambda the group's work-items make every
 * candidate's choice argmin_t u D_t + lambda R_t (rdr_option: src/rdr.c's
 * skv_rdr_option, the same float operations in the same order, so the choices are
 * identical on every device) and count them per option in local memory; work-item 0
 * then takes the search's next step, in integers and exact float operations as src/rdr.c
 * does, so the lambdas requested are the host's. At the end the choices at the final
 * lambda are in `choice` and code[p] says what they are: 0 final (everything fits at
 * lambda 0), 1 the choices at lambda_lo that the host finishes (skv_rdr_finish), -1 the
 * protected tokens alone do not fit.
 * prm: mse_k[4], mse_v[4], token_bytes[4]; pbytes: page bytes per tier; fixed[p][4]:
 * protected tokens per tier; budget[p] in bytes. */
#pragma OPENCL FP_CONTRACT OFF

static uint rdr_option(float ui, float e, uint cur, float lambda, __constant float *prm, uint tiers)
{
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
    return best;
}

/* The search's states (src/rdr.c) */
#define S_ZERO 0
#define S_HI 1
#define S_DOWN 2
#define S_UP 3
#define S_BISECT 4
#define S_FINAL 5
#define S_DONE 6

__kernel void rdr_search(__global const float *u, __global const float *energy, __global const uchar *current,
                         __global const uint *first, __global const uint *n, __global const ulong *budget,
                         __global const uint *fixed, __constant float *prm, __constant uint *pbytes, uint page_tokens,
                         uint tiers, __global uchar *choice, __global int *code)
{
    const uint p = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);
    const uint f = first[p], m = n[p];
    __local uint counts[5];
    __local float lambda;
    __local int want, state;
    /* work-item 0's search (src/rdr.c: skv_rdr_search) */
    float lo = 0.0f, hi = 1.0f, x = 0.0f;
    ulong b_lo = ULONG_MAX, b_hi = 0, target = 0, page = 0;
    int i = 0, result = 0;
    if (lid == 0) {
        lambda = 0.0f;
        want = 1;
        state = S_ZERO;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (;;) {
        if (lid < 5)
            counts[lid] = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        const float lam = lambda;
        const int w = want;
        for (uint k = lid; k < m; k += wg) {
            const uint o = rdr_option(u[f + k], energy[f + k], current[f + k], lam, prm, tiers);
            atomic_inc(&counts[o]);
            if (w)
                choice[f + k] = (uchar)o;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) {
            ulong b = 0, rounded = 0, dropped = 0;
            for (uint t = 0; t < 4; t++) {
                const ulong fx = fixed[p * 4 + t];
                b += (ulong)counts[t] * pbytes[t];
                rounded += ((ulong)counts[t] + fx + page_tokens - 1) / page_tokens * pbytes[t];
                dropped += (fx + page_tokens - 1) / page_tokens * pbytes[t];
            }
            int s = state, next = S_DONE;
            float req = 0.0f;
            int next_want = 0;
            /* finish_bracket as a statement: bisect while the ends are over a page apart */
#define FINISH_BRACKET()                                                                                     \
    do {                                                                                                     \
        next = S_FINAL, req = lo, next_want = 1;                                                             \
        if (i < 64 && (b_lo == ULONG_MAX || b_lo - b_hi > page)) {                                           \
            float mid = lo == 0.0f ? 0.5f * hi : as_float(as_uint(lo) + (as_uint(hi) - as_uint(lo)) / 2);    \
            if (!(mid <= lo || mid >= hi))                                                                   \
                x = mid, next = S_BISECT, req = mid, next_want = 0;                                          \
        }                                                                                                    \
    } while (0)
#define UP()                                                                                                 \
    do {                                                                                                     \
        if (i < 120 && b_hi > target) {                                                                      \
            lo = hi, b_lo = b_hi;                                                                            \
            hi *= 4.0f;                                                                                      \
            next = S_UP, req = hi, next_want = 0;                                                            \
        } else {                                                                                             \
            i = 0;                                                                                           \
            FINISH_BRACKET();                                                                                \
        }                                                                                                    \
    } while (0)
            if (s == S_ZERO) {
                if (rounded <= budget[p]) {
                    result = 0;
                } else if (dropped > budget[p]) {
                    result = -1;
                } else {
                    target = budget[p] * page_tokens;
                    for (uint t = 0; t < 4; t++)
                        page = pbytes[t] > page ? pbytes[t] : page;
                    page *= page_tokens;
                    lo = 0.0f, hi = 1.0f, b_lo = ULONG_MAX;
                    if (b > target)
                        next = S_HI, req = hi, next_want = 0;
                    else
                        next = S_FINAL, req = lo, next_want = 1;
                }
            } else if (s == S_HI) {
                b_hi = b;
                if (b <= target) {
                    x = hi * 0.25f;
                    if (x > 0.0f)
                        next = S_DOWN, req = x, next_want = 0;
                    else
                        FINISH_BRACKET();
                } else {
                    i = 0;
                    UP();
                }
            } else if (s == S_DOWN) {
                if (b > target) {
                    lo = x, b_lo = b;
                    FINISH_BRACKET();
                } else {
                    hi = x, b_hi = b;
                    x *= 0.25f;
                    if (x > 0.0f)
                        next = S_DOWN, req = x, next_want = 0;
                    else
                        FINISH_BRACKET();
                }
            } else if (s == S_UP) {
                b_hi = b;
                i++;
                UP();
            } else if (s == S_BISECT) {
                if (b <= target)
                    hi = x, b_hi = b;
                else
                    lo = x, b_lo = b;
                i++;
                FINISH_BRACKET();
            } else { /* S_FINAL: the choices at lambda_lo are written */
                result = 1;
            }
#undef UP
#undef FINISH_BRACKET
            state = next;
            lambda = req;
            want = next_want;
            if (next == S_DONE)
                code[p] = result;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (state == S_DONE)
            break;
    }
}

/* RDR's query energy from the queries of an interop decode call (host/rdr_model.c): for
 * each kv-head (one work-item), the mean of scale^2 |q|^2 over the call's rows and the
 * head's q-heads folded into the running mean acc[base + head][0] over acc[base +
 * head][1] queries (base: the layer's first (layer, kv-head)).
 * q: [rows][q_heads][d] from byte q_off, dtype 0 f32, 1 f16, 2 bf16. Calls run in queue
 * order, so no two update acc at once. */
__kernel void q_energy(__global const uchar *q, ulong q_off, uint dtype, uint rows, uint q_heads, uint group, uint d,
                       float scale, __global float *acc, uint base)
{
    const uint h = get_global_id(0), at = 2 * (base + h);
    float sum = 0.0f;
    for (uint r = 0; r < rows; r++)
        for (uint g = 0; g < group; g++) {
            const ulong row = ((ulong)r * q_heads + (ulong)h * group + g) * d;
            float e = 0.0f;
            for (uint i = 0; i < d; i++) {
                float x;
                if (dtype == 0)
                    x = *(__global const float *)(q + q_off + (row + i) * 4);
                else if (dtype == 1)
                    x = vload_half(0, (__global const half *)(q + q_off + (row + i) * 2));
                else
                    x = as_float((uint)(*(__global const ushort *)(q + q_off + (row + i) * 2)) << 16);
                e += x * x;
            }
            sum += e * scale * scale;
        }
    const float n = (float)(rows * group), seen = acc[at + 1];
    if (isfinite(sum)) {
        acc[at] += (sum / n - acc[at]) * (n / (seen + n));
        acc[at + 1] = seen + n;
    }
}
