/* C references of the OpenCL kernels: each kernel in cl/ has its twin here, and a test
 * holds the two equal (prefix skv_ref_; the RDR solver: skv_rdr_). Internal: none of
 * this is exported from the shared library (it builds with -fvisibility=hidden and
 * exports SKV_API functions only).
 *
 * Two homes: what the library itself computes with (fp16/bf16 conversions, the ADA
 * codebook, transform and query tables, RoPE frequencies and TriAttention's effective
 * query, SnapKV's pooling, HeteroCache's statistics, the RDR solver) is built into it,
 * from src/ (marked "library" below); the rest is the static library skv_ref, from
 * src/ref/, which the test suites and the skv command link next to skv_static. */
#ifndef SKV_REF_H
#define SKV_REF_H

#include <stddef.h>
#include <stdint.h>

#include "skv/skv.h"

/* cl/stream_read.cl (src/ref/ref_stream.c): out[g] = XOR of work-item g's 16-byte words
 * folded to 32 bits; item g reads words g, g + n_items, ... (strided) or the g-th run of
 * ceil(n_words / n_items) words (blocked). `words` holds 4 * n_words uint32. */
void skv_ref_stream_read(const uint32_t *words, uint64_t n_words, size_t n_items, int blocked,
                         uint32_t *out);

/* Conversions with the kernels' rounding (round to nearest even); library (src/half.c). */
uint16_t skv_ref_f32_to_f16(float f);
uint16_t skv_ref_f32_to_f16_rtn(float f); /* toward -inf, as vstore_half_rtn */
uint16_t skv_ref_f32_to_f16_rtp(float f); /* toward +inf, as vstore_half_rtp */
float skv_ref_f16_to_f32(uint16_t h);
uint16_t skv_ref_f32_to_bf16(float f);
float skv_ref_bf16_to_f32(uint16_t b);
/* Element `index` of an array of `dtype`, as float. */
float skv_ref_load(skv_dtype dtype, const void *base, size_t index);

/* ---- pages (src/ref/ref_page.c) ---- */
/* The F16 page (cl/append_f16.cl writes it, cl/decode_f16.cl reads it): keys
 * [D/8][P][8] halves, values [P][D] halves, positions int32[P]. */
size_t skv_ref_f16_key_index(uint32_t page_tokens, uint32_t slot, uint32_t dim);
void skv_ref_f16_page_write(void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                            const float *k, const float *v, int32_t position);
void skv_ref_f16_page_read(const void *page, uint32_t page_tokens, uint32_t head_dim, uint32_t slot,
                           float *k, float *v, int32_t *position);

/* The ADA page: key words [key_words][P] uint32, norms [P] fp16, values
 * [P][value_bytes], positions int32[P]. */
void skv_ref_ada_page_write(void *page, uint32_t page_tokens, uint32_t key_words, uint32_t value_bytes,
                            uint32_t slot, const uint32_t *words, uint16_t norm, const uint8_t *values,
                            int32_t position);

/* The score of key k (d floats) by `scorer` (cl/score.cl; src/ref/ref_score.c): mean is the mean key (of k's window for
 * the windowed scorer), unit_mean the mean of k/|k|; either may be NULL when the scorer
 * does not use it. */
float skv_ref_score_key(skv_scorer scorer, const float *k, uint32_t d, const float *mean,
                        const float *unit_mean, int32_t position, uint32_t n_sink);

/* ---- RoPE and TriAttention (library: src/rope.c; references: src/ref/ref_rope.c) ---- */
/* The TriAttention offsets {1, 2, 4, ..., 65536}: how many. */
#define SKV_REF_TRI_OFFSETS 17
/* Library: the indices of pair f in the layout of `r`. */
void skv_ref_rope_pair(const skv_rope_desc *r, uint32_t d, uint32_t f, uint32_t *i0, uint32_t *i1);
/* Library: omega_f of pair f (position scaling folded in). */
double skv_ref_rope_omega(const skv_rope_desc *r, uint32_t d, uint32_t f);
/* Library: rotates x (d floats) by `position` (negative: inverts RoPE). */
void skv_ref_rope_rotate(const skv_rope_desc *r, uint32_t d, double position, float *x);
/* TriAttention score of a post-RoPE key at `position` for one q-head's statistics, as
 * defined: RoPE inverted, the mean over offsets {1, 2, 4, ..., 65536} of
 * sum_f |qbar_f||k_f| cos(w_f (t0 + o - p) + arg qbar_f - arg k_f), plus
 * sum_f (a_f - |qbar_f|) |k_f|. */
double skv_ref_triattention_explicit(const skv_rope_desc *r, uint32_t d, const float *q_mean,
                                     const float *q_abs, const float *k_post, int32_t position, int64_t t0);
/* Library: the collapsed form: effective[f] = (Re Q_f, Im Q_f, a_f - |qbar_f|) with
 * Q_f = qbar_f e^{i w_f t0} mean_o e^{i w_f o}; the score is then
 * sum_f Re(Q_f conj(k_f)) + effective[f].z |k_f| on the post-RoPE key, no inversion. */
void skv_ref_triattention_query(const skv_rope_desc *r, uint32_t d, const float *q_mean, const float *q_abs,
                                int64_t t0, float *effective);
/* The collapsed score of one key (cl/score.cl). */
double skv_ref_triattention(const skv_rope_desc *r, uint32_t d, const float *effective, const float *k_post);

/* SnapKV for one kv-head: window queries q[w][G][d] at qpos[w], keys k[n][d] at kpos[n];
 * out[n] = pooled mean attention (src/ref/ref_snapkv.c). Returns 0, -1 on out of memory. */
int skv_ref_snapkv(const float *q, const int32_t *qpos, uint32_t w, uint32_t group, const float *k,
                   const int32_t *kpos, uint64_t n, uint32_t d, float *out);
/* Library (src/snapkv.c): the pooling step alone: the votes[n] of the tokens at kpos[n]
 * before window_start averaged over 5 neighbours among them in position order (zero
 * padding, divided by 5; the window's votes pooled into none); tokens at or after
 * window_start: +inf. */
int skv_ref_snapkv_pool(const float *votes, const int32_t *kpos, uint64_t n, int32_t window_start,
                        float *out);

/* ---- RDR (library: src/rdr.c; the greedy reference shares the solver's downgrades) ---- */
#define SKV_RDR_DROP SKV_TIER_COUNT /* the option "drop" */

typedef struct skv_rdr_item {
    float u;          /* utility: the token's estimated share of future attention */
    float key_energy; /* |k|^2 / mean |k|^2 over the candidates */
    uint8_t current;  /* the tier it is in now */
} skv_rdr_item;

typedef struct skv_rdr_problem {
    const skv_rdr_item *items;
    uint64_t n;
    uint32_t tiers;                        /* allowed tiers (bit mask) */
    double mse_k[SKV_TIER_COUNT];          /* normalised key MSE per tier (F16: 0) */
    double mse_v[SKV_TIER_COUNT];          /* relative value MSE per tier */
    double token_bytes[SKV_TIER_COUNT];    /* rate per token (keys, values, position) */
    uint64_t page_bytes[SKV_TIER_COUNT];
    uint32_t page_tokens;
    uint64_t fixed[SKV_TIER_COUNT];        /* protected tokens already in each tier */
    uint64_t budget;                       /* bytes after packing, page rounding included */
} skv_rdr_problem;

/* Bytes after packing a choice (one option per item, SKV_RDR_DROP for drop). */
uint64_t skv_rdr_bytes(const skv_rdr_problem *p, const uint8_t *choice);
double skv_rdr_distortion(const skv_rdr_problem *p, const uint8_t *choice);
/* One item's option for multiplier lambda: argmin u D_t + lambda R_t (float, a fixed
 * order of operations: the device computes the same). */
unsigned skv_rdr_option(const skv_rdr_problem *p, const skv_rdr_item *it, float lambda);
/* Where the per-item choices for a lambda are computed: count[option] always, the
 * choices themselves when `choice` is not NULL. 0, or non-zero on failure. */
typedef struct skv_rdr_backend {
    int (*choose)(void *user, float lambda, uint8_t *choice, uint64_t *count);
    void *user;
} skv_rdr_backend;
/* The Lagrangian solver (bisection on lambda, then a greedy finish over page rounding and
 * the slack spent on the best upgrades): 0, -1 when even dropping every candidate does
 * not fit, -2 on failure (out of memory, or the backend's). */
int skv_rdr_solve_with(const skv_rdr_problem *p, const skv_rdr_backend *be, uint8_t *choice);
/* The same on the host. */
int skv_rdr_solve(const skv_rdr_problem *p, uint8_t *choice);
/* The solver as steps (cl/rdr.cl's rdr_search takes the same steps on the device, every
 * (layer, kv-head) of a compression in one launch): after begin, evaluate
 * choose(s->lambda), with the choices when s->want_choice, and pass the counts (and
 * choices) to step; step returns 1 while another request follows, 0 when done with s->rc
 * (as skv_rdr_solve_with's) and the final choices in `choice`. */
typedef struct skv_rdr_search {
    int state;
    float lambda;    /* the request */
    int want_choice;
    int rc;          /* when done */
    float lo, hi, x;
    uint64_t b_lo, b_hi, target, page; /* bytes times page_tokens (b_lo UINT64_MAX: none yet) */
    int i;
} skv_rdr_search;
#define SKV_RDR_SEARCH_DONE 6 /* state once step returned 0 */
void skv_rdr_search_begin(skv_rdr_search *s, const skv_rdr_problem *p);
int skv_rdr_search_step(skv_rdr_search *s, const skv_rdr_problem *p, const uint64_t *count, uint8_t *choice);
/* The search's finish from the choices at the last lambda that did not fit: the cheapest
 * downgrades until the budget holds, then the best upgrades into the slack; 0, -1 (does
 * not fit), -2 (out of memory). */
int skv_rdr_finish(const skv_rdr_problem *p, uint8_t *choice);
/* The uniform allocations within the budget: for each allowed tier t, every candidate
 * in t (a token already in a lower tier stays there), with the candidates of least
 * utility dropped, fewest first, where that does not fit. When the model rates one
 * lower than `choice` (sum of u D), the best replaces it: 1; else 0; -2 out of memory.
 * So RDR never keeps an allocation its own model rates worse than a uniform one the
 * budget admits (page rounding can make the Lagrangian's choice lose to one). */
int skv_rdr_uniform_check(const skv_rdr_problem *p, uint8_t *choice);
/* The greedy reference: 0, -1 (does not fit), -2 (out of memory). */
int skv_ref_rdr_greedy(const skv_rdr_problem *p, uint8_t *choice);

/* ---- src/ref/ref_attention.c ---- */
/* |got - ref| / |ref| (L2), the error measure of tests, demo and eval. */
double skv_ref_rel_l2(const double *ref, const float *got, size_t n);

/* Exact decode attention for one query: q[q_heads][D], k and v [n_tokens][kv_heads][D],
 * out[q_heads][D] in double. Returns 0, or -1 on bad sizes or out of memory. */
int skv_ref_attention_decode(const float *q, const float *k, const float *v, uint64_t n_tokens,
                             uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim, float scale,
                             double *out);

/* ---- ADA key codes (DESIGN.md §5) ---- */
/* Library (src/ada.c): the codebook, the parameters, the signs, the transform and the
 * query table. The codes, keys and logits from codes: references (src/ref/ref_ada.c). */
typedef struct skv_ref_ada_params {
    uint32_t head_dim;
    unsigned radius_bits, angle_bits, pair_bits;
    uint32_t key_words;          /* 32-bit words of pair codes per key */
    float radius[16];            /* Lloyd–Max centroids of u = rho sqrt(d/2) / |k| */
    float radius_bound_sq[15];   /* squared decision boundaries between them */
    float bound_cos[16], bound_sin[16];   /* sector boundaries k 2pi/S, k < S/2 */
    float centre_cos[32], centre_sin[32]; /* sector centres -pi + (c + 1/2) 2pi/S */
    float transform_scale;       /* 1 / sqrt(d) */
    float rho_scale;             /* sqrt(2 / d): radius unit (kernels read this, not sqrt) */
} skv_ref_ada_params;

/* Lloyd–Max codebook (2^radius_bits centroids, boundaries between them) for the radius
 * of a coordinate pair of a direction uniform on the sphere in head_dim dimensions.
 * Solved once per (head_dim, radius_bits) in a process, then copied (thread-safe). */
void skv_ref_ada_codebook(uint32_t head_dim, unsigned radius_bits, float *centroids, float *bounds);
void skv_ref_ada_params_init(skv_ref_ada_params *p, uint32_t head_dim, unsigned radius_bits,
                             unsigned angle_bits);
/* The +-1 signs of the randomized Hadamard transform for (layer, kv_head): the draw of
 * rotation seed `seed` (skv_cache_desc.rotation_seed; 0 is the built-in draw, which
 * skv_ref_ada_signs gives). */
void skv_ref_ada_signs(uint32_t layer, uint32_t kv_head, uint32_t head_dim, int8_t *signs);
void skv_ref_ada_signs_seeded(uint64_t seed, uint32_t layer, uint32_t kv_head, uint32_t head_dim, int8_t *signs);
/* y = H diag(signs) x / sqrt(d), butterflies in the kernels' order. */
void skv_ref_ada_transform(const skv_ref_ada_params *p, const int8_t *signs, const float *x, float *y);
uint16_t skv_ref_ada_norm_code(float norm_squared);
unsigned skv_ref_ada_angle_code(const skv_ref_ada_params *p, float x, float y);
unsigned skv_ref_ada_radius_code(const skv_ref_ada_params *p, float x, float y, float norm2);
/* One key: key_words words of packed pair codes (radius in the low bits) and the norm. */
void skv_ref_ada_encode_key(const skv_ref_ada_params *p, const int8_t *signs, const float *k,
                            uint32_t *words, uint16_t *norm_code);
unsigned skv_ref_ada_pair_code(const skv_ref_ada_params *p, const uint32_t *words, uint32_t j);
void skv_ref_ada_decode_key(const skv_ref_ada_params *p, const int8_t *signs, const uint32_t *words,
                            uint16_t norm_code, float *k);
/* table[j][c] = q'_2j cos(phi_c) + q'_2j+1 sin(phi_c), q' the transformed query. */
void skv_ref_ada_query_table(const skv_ref_ada_params *p, const int8_t *signs, const float *q,
                             float *table);
/* q . decode(k) from the codes alone: n sqrt(2/d) sum_j R[r_j] table[j][c_j]. */
float skv_ref_ada_logit(const skv_ref_ada_params *p, const float *table, const uint32_t *words,
                        uint16_t norm_code);

/* ---- quantised values (src/ref/ref_value_quant.c) ---- */
/* One token's values in groups of `group`: codes of `bits` (8, 4, 2) packed LSB first,
 * then per group an fp16 scale and an fp16 min. Bytes per token: */
uint32_t skv_ref_value_bytes(uint32_t head_dim, unsigned bits, unsigned group);
void skv_ref_value_encode(const float *v, uint32_t head_dim, unsigned bits, unsigned group, uint8_t *out);
void skv_ref_value_decode(const uint8_t *in, uint32_t head_dim, unsigned bits, unsigned group, float *v);

/* ---- HeteroCache's head statistics (library: src/hetero.c; the top-k's reference:
 * src/ref/ref_topk.c) ---- */
/* cl/topk.cl: the min(k, n) largest of w[n] (ties: the lower index; NaN last), as indices
 * in ascending order; returns how many. */
uint32_t skv_ref_topk(const float *w, uint32_t n, uint32_t k, uint32_t *out);
/* |A ∩ B| of two ascending index sets. */
uint32_t skv_ref_set_overlap(const uint32_t *a, uint32_t na, const uint32_t *b, uint32_t nb);
/* Stability S: the median over `steps` sets (set t: counts[t] indices at sets + t * stride)
 * of |K_t ∩ ref| / k. */
float skv_ref_hetero_stability(const uint32_t *sets, const uint32_t *counts, uint32_t steps,
                               uint32_t stride, const uint32_t *ref, uint32_t ref_count, uint32_t k);
/* Greedy star clustering of one layer's heads: while some unassigned head has unassigned
 * heads with similarity >= tau_sim (similarity: [heads][heads], symmetric), the one with
 * the most (ties: higher stability, then lower index) becomes a pivot and those heads its
 * satellites (pivot[h]: the satellite's pivot, else h). The rest are anchors (stability
 * >= tau_stable) or volatile. */
skv_status skv_ref_hetero_classify(uint32_t heads, const float *stability, const float *similarity,
                                   float tau_sim, float tau_stable, skv_head_category *category,
                                   uint32_t *pivot);
/* Token budgets per head: pivots and volatile heads their whole length; the rest of
 * `budget` to anchors and satellites in proportion to 1 / (S + eps), none above its
 * length (a capped head's surplus goes to the others), rounded down. INVALID_ARG when
 * the whole heads alone exceed the budget. */
skv_status skv_ref_hetero_budgets(uint32_t heads, const skv_head_category *category, const float *stability,
                                  const uint64_t *length, uint64_t budget, float eps, uint64_t *out);

#endif /* SKV_REF_H */
