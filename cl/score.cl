/* Retention scores on the device (C reference: src/score.c) and the running key
 * statistics they use. Kernels:
 *   key_inv_norms: 1/|k| of tokens [base, base + m) of each head's F16 list;
 *   key_stats:     per (head, dim) the sums of k and k/|k| of those tokens by window;
 *   score_f16:     scores of one head's F16 tokens (and each key's |k|^2, as score_ada);
 *   score_ada:     scores of one head's tokens in an ADA tier, from the codes: the key
 *                  enters only through dot products with the statistics vectors, read
 *                  from per-vector tables as in decode, and its decoded norm.
 * Build defines: D, P; score_ada also RB, AB, KW, VB, VG (the tier). */
#define F16_PAGE_BYTES SKV_F16_PAGE_BYTES(D, P)

static inline __global const uchar *list_page(SKV_POOL_PARAMS_P(pool), __global const uint *pages, uint i, uint page_bytes)
{
    return SKV_PAGE_P(pool, pages[i / P], page_bytes);
}

static inline float f16_key(__global const uchar *page, uint slot, uint d)
{
    return vload_half(((d / 8) * P + slot) * 8 + d % 8, (__global const half *)page);
}

/* pages: [heads][pages_per_head] F16 list page ids; lists hold `tokens[h]` tokens, of
 * which the last m are new. */
__kernel void key_inv_norms(SKV_POOL_PARAMS, __global const uint *pages, uint pages_per_head,
                            __global const uint *tokens, uint m, __global float *inv)
{
    const uint t = get_global_id(0), h = get_global_id(1);
    const uint i = tokens[h] - m + t;
    __global const uchar *page = SKV_PAGE(pages[h * pages_per_head + i / P], F16_PAGE_BYTES);
    float n2 = 0.0f;
    for (uint d = 0; d < D; d++) {
        float k = f16_key(page, i % P, d);
        n2 += k * k;
    }
    inv[h * m + t] = n2 > 0.0f ? 1.0f / sqrt(n2) : 0.0f;
}

/* out: [heads][n_windows][2][D] = sums of k and of k/|k| per window (win[t]: the compact
 * window index of new token t). */
__kernel void key_stats(SKV_POOL_PARAMS, __global const uint *pages, uint pages_per_head,
                        __global const uint *tokens, uint m, __global const float *inv,
                        __global const uint *win, uint n_windows, __global float *out)
{
    const uint d = get_global_id(0), h = get_global_id(1);
    for (uint w = 0; w < n_windows; w++) {
        out[((h * n_windows + w) * 2) * D + d] = 0.0f;
        out[((h * n_windows + w) * 2 + 1) * D + d] = 0.0f;
    }
    for (uint t = 0; t < m; t++) {
        const uint i = tokens[h] - m + t;
        __global const uchar *page = SKV_PAGE(pages[h * pages_per_head + i / P], F16_PAGE_BYTES);
        const float k = f16_key(page, i % P, d);
        __global float *o = out + ((h * n_windows + win[t]) * 2) * D + d;
        o[0] += k;
        o[D] += k * inv[h * m + t];
    }
}

static inline float score_of(uint scorer, float kk, float km, float mm, float ka, float aa, int position, uint n_sink)
{
    switch (scorer) {
    case 1: /* knorm */
        return -sqrt(kk);
    case 2: /* keydiff */
        return kk > 0.0f && aa > 0.0f ? -ka / sqrt(kk * aa) : 0.0f;
    case 3: /* manifold */
    case 4: /* manifold_windowed */
        return sqrt(fmax(kk - 2.0f * km + mm, 0.0f));
    case 5: /* streaming */
        return position >= 0 && (uint)position < n_sink ? INFINITY : (float)position;
    }
    return 0.0f;
}

/* The statistics row of a token at `position`: manifold_windowed's rows are the windows
 * that hold tokens (wins, ascending), and a token takes the last row at or below its
 * window; the other scorers have one mean, row n_windows - 1. */
static inline uint stats_row(uint scorer, __global const uint *wins, uint n_windows, int position, uint window)
{
    if (scorer != 4)
        return n_windows - 1;
    const uint w = position < 0 ? 0 : (uint)position / window;
    uint lo = 0, hi = n_windows; /* the first row past w */
    while (lo < hi) {
        const uint mid = lo + (hi - lo) / 2;
        if (wins[mid] <= w)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? lo - 1 : 0;
}

/* vecs: [n_windows + 1][D]: the window means (of the windows wins names), then the unit
 * mean. */
__kernel void score_f16(SKV_POOL_PARAMS, __global const uint *pages, uint first, uint n_tokens, uint scorer,
                        __global const float *vecs, uint n_windows, __global const uint *wins, uint window,
                        uint n_sink, __global float *scores, __global float *energy)
{
    if (get_global_id(0) >= n_tokens) /* tokens first .. first + n_tokens - 1 of the list */
        return;
    const uint t = first + (uint)get_global_id(0), o = (uint)get_global_id(0);
    __global const uchar *page = SKV_PAGE(pages[t / P], F16_PAGE_BYTES);
    const int position = ((__global const int *)(page + SKV_POSITIONS_OFFSET(F16_PAGE_BYTES, P)))[t % P];
    const uint w = stats_row(scorer, wins, n_windows, position, window);
    __global const float *mu = vecs + (size_t)w * D, *a = vecs + (size_t)n_windows * D;
    float kk = 0.0f, km = 0.0f, mm = 0.0f, ka = 0.0f, aa = 0.0f;
    for (uint d = 0; d < D; d++) {
        float k = f16_key(page, t % P, d);
        kk += k * k;
        km += k * mu[d];
        mm += mu[d] * mu[d];
        ka += k * a[d];
        aa += a[d] * a[d];
    }
    scores[o] = score_of(scorer, kk, km, mm, ka, aa, position, n_sink);
    energy[o] = kk; /* |k|^2, for RDR's distortions: no second pass */
}

/* TriAttention, raw per q-head (the host z-scores and takes the group max): eff is
 * [G][D/2][3] = (Re Q_f, Im Q_f, a_f - |qbar_f|), src/rope.c: skv_ref_triattention. */
static inline void tri_scores(const float *k, __global const float *eff, uint G, uint interleaved, uint t, uint n,
                       __global float *raw)
{
    for (uint g = 0; g < G; g++) {
        float s = 0.0f;
        for (uint f = 0; f < D / 2; f++) {
            const float kr = interleaved ? k[2 * f] : k[f], ki = interleaved ? k[2 * f + 1] : k[f + D / 2];
            __global const float *e = eff + (g * (D / 2) + f) * 3;
            s += e[0] * kr + e[1] * ki + e[2] * sqrt(kr * kr + ki * ki);
        }
        raw[g * n + t] = s;
    }
}

__kernel void tri_f16(SKV_POOL_PARAMS, __global const uint *pages, uint n_tokens, __global const float *eff, uint G,
                      uint interleaved, __global float *raw)
{
    const uint t = get_global_id(0);
    if (t >= n_tokens)
        return;
    __global const uchar *page = SKV_PAGE(pages[t / P], F16_PAGE_BYTES);
    float k[D];
    for (uint d = 0; d < D; d++)
        k[d] = f16_key(page, t % P, d);
    tri_scores(k, eff, G, interleaved, t, n_tokens, raw);
}

/* Dense keys (and positions) of one list, at rows out_offset.. of keys[][D] (SnapKV's GEMM). */
__kernel void keys_f16(SKV_POOL_PARAMS, __global const uint *pages, uint n_tokens, uint out_offset,
                       __global float *keys, __global int *pos)
{
    const uint t = get_global_id(0);
    if (t >= n_tokens)
        return;
    __global const uchar *page = SKV_PAGE(pages[t / P], F16_PAGE_BYTES);
    for (uint d = 0; d < D; d++)
        keys[(size_t)(out_offset + t) * D + d] = f16_key(page, t % P, d);
    pos[out_offset + t] = ((__global const int *)(page + SKV_POSITIONS_OFFSET(F16_PAGE_BYTES, P)))[t % P];
}

/* SnapKV over S[rows][n] = scaled q.k (rows: window query i, q-head g = row % G): per row
 * the max and the sum of exp over the keys at or before the query's position ... */
__kernel void snap_rows(__global const float *S, uint n, __global const int *kpos, __global const int *qpos, uint G,
                        __global float *row_m, __global float *row_l)
{
    const uint r = get_global_id(0);
    const int qp = qpos[r / G];
    __global const float *s = S + (size_t)r * n;
    float m = -INFINITY, l = 0.0f;
    for (uint t = 0; t < n; t++)
        if (kpos[t] <= qp)
            m = fmax(m, s[t]);
    for (uint t = 0; t < n; t++)
        if (kpos[t] <= qp)
            l += exp(s[t] - m);
    row_m[r] = m;
    row_l[r] = l;
}

/* ... and per key the attention it gets, averaged over every row (window x group). */
__kernel void snap_vote(__global const float *S, uint n, uint rows, __global const int *kpos, __global const int *qpos,
                        uint G, __global const float *row_m, __global const float *row_l, __global float *vote)
{
    const uint t = get_global_id(0);
    if (t >= n)
        return;
    float v = 0.0f;
    for (uint r = 0; r < rows; r++)
        if (kpos[t] <= qpos[r / G])
            v += exp(S[(size_t)r * n + t] - row_m[r]) / row_l[r];
    vote[t] = v / (float)rows;
}

#ifdef ADA
#define ADA_PAGE_BYTES SKV_ADA_PAGE_BYTES(D, P, KW, VB, VG)

/* tables: [n_windows + 1][D/2][NS], T_v[j][c] of each statistics vector v (host-built,
 * skv_ref_ada_query_table); norms2: |v|^2 per row; radius: the tier's codebook. */
__kernel void score_ada(SKV_POOL_PARAMS, __global const uint *pages, uint first, uint n_tokens, uint scorer,
                        __global const float *tables, __global const float *norms2, uint n_windows,
                        __global const uint *wins, uint window, uint n_sink, __constant float *radius, __global float *scores, __global float *energy)
{
    if (get_global_id(0) >= n_tokens) /* tokens first .. first + n_tokens - 1 of the list */
        return;
    const uint t = first + (uint)get_global_id(0), o = (uint)get_global_id(0);
    __global const uchar *page = SKV_PAGE(pages[t / P], ADA_PAGE_BYTES);
    const uint slot = t % P;
    const int position = ((__global const int *)(page + SKV_POSITIONS_OFFSET(ADA_PAGE_BYTES, P)))[slot];
    const uint w = stats_row(scorer, wins, n_windows, position, window);
    __global const float *tm = tables + (size_t)w * (D / 2) * NS, *ta = tables + (size_t)n_windows * (D / 2) * NS;
    __global const uint *kw = (__global const uint *)page + slot;
    uint words[KW];
    for (uint i = 0; i < KW; i++)
        words[i] = kw[i * P];
    float r2 = 0.0f, dm = 0.0f, da = 0.0f;
    for (uint j = 0; j < D / 2; j++) {
        const uint bit = j * (RB + AB), wi = bit / 32, sh = bit % 32;
        uint code = words[wi] >> sh;
        if (sh + RB + AB > 32)
            code |= words[wi + 1] << (32 - sh);
        code &= (1u << (RB + AB)) - 1u;
        const float r = radius[code & (NR - 1)];
        const uint c = code >> RB;
        r2 += r * r;
        dm += r * tm[j * NS + c];
        da += r * ta[j * NS + c];
    }
    const float n = vload_half(slot, (__global const half *)(page + SKV_ADA_NORMS_OFFSET(P, KW))) * sqrt(2.0f / (float)D);
    /* the decoded key k^: |k^|^2 = n^2 sum R^2, k^.v = n sum R T_v */
    scores[o] = score_of(scorer, n * n * r2, n * dm, norms2[w], n * da, norms2[n_windows], position, n_sink);
    energy[o] = n * n * r2;
}

/* params: the tier's table, laid out as cl/common.h's PRM_* say */

/* A key decoded from its codes, exactly as skv_ref_ada_decode_key does: for scorers that
 * need more than dot products (TriAttention's per-pair magnitudes, SnapKV's GEMM). This
 * is scoring, not the decode path, which never forms a dense key. */
static inline void ada_decode_key(__global const uchar *page, uint slot, __global const char *signs, uint sign_row,
                           __constant float *params, float *y)
{
    __global const uint *kw = (__global const uint *)page + slot;
    const float rho = vload_half(slot, (__global const half *)(page + SKV_ADA_NORMS_OFFSET(P, KW))) * sqrt(2.0f / (float)D);
    for (uint j = 0; j < D / 2; j++) {
        const uint code = skv_pair_code(kw, P, j, RB + AB);
        const float r = params[code & (NR - 1)] * rho;
        y[2 * j] = r * params[PRM_CCOS + (code >> RB)];
        y[2 * j + 1] = r * params[PRM_CSIN + (code >> RB)];
    }
    skv_butterflies(y, D);
    for (uint i = 0; i < D; i++) {
        float x = y[i] * params[PRM_SCALE];
        y[i] = signs[(size_t)sign_row * D + i] < 0 ? -x : x;
    }
}

__kernel void tri_ada(SKV_POOL_PARAMS, __global const uint *pages, uint n_tokens, __global const float *eff, uint G,
                      uint interleaved, __global const char *signs, uint sign_row, __constant float *params,
                      __global float *raw)
{
    const uint t = get_global_id(0);
    if (t >= n_tokens)
        return;
    float y[D];
    ada_decode_key(SKV_PAGE(pages[t / P], ADA_PAGE_BYTES), t % P, signs, sign_row, params, y);
    tri_scores(y, eff, G, interleaved, t, n_tokens, raw);
}

__kernel void keys_ada(SKV_POOL_PARAMS, __global const uint *pages, uint n_tokens, uint out_offset,
                       __global const char *signs, uint sign_row, __constant float *params, __global float *keys,
                       __global int *pos)
{
    const uint t = get_global_id(0);
    if (t >= n_tokens)
        return;
    __global const uchar *page = SKV_PAGE(pages[t / P], ADA_PAGE_BYTES);
    float y[D];
    ada_decode_key(page, t % P, signs, sign_row, params, y);
    for (uint d = 0; d < D; d++)
        keys[(size_t)(out_offset + t) * D + d] = y[d];
    pos[out_offset + t] = ((__global const int *)(page + SKV_POSITIONS_OFFSET(ADA_PAGE_BYTES, P)))[t % P];
}
#endif
