/* HeteroCache's head statistics in C (src/hetero.c): top-k, set overlap, stability,
 * star clustering and per-head budgets, on synthetic heads built to be stable,
 * drifting and redundant. */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "cache_internal.h" /* test_hetero_stress reads which F16 pages are in host memory */
#include "cl_fault_wrap.h"   /* and fails OpenCL calls */
#include "host_internal.h"
#include "skv_ref.h"

/* The k largest by brute force: repeatedly the largest not yet taken (ties: lower index). */
static uint32_t brute_topk(const float *w, uint32_t n, uint32_t k, uint32_t *out)
{
    uint8_t *taken = calloc(n, 1);
    uint32_t m = k < n ? k : n;
    for (uint32_t r = 0; r < m; r++) {
        uint32_t best = n;
        for (uint32_t i = 0; i < n; i++)
            if (!taken[i] && (best == n || w[i] > w[best]))
                best = i;
        taken[best] = 1;
    }
    uint32_t c = 0;
    for (uint32_t i = 0; i < n; i++)
        if (taken[i])
            out[c++] = i;
    free(taken);
    return c;
}

static void test_topk(void **state)
{
    (void)state;
    test_rng r = {11};
    const uint32_t sizes[][2] = {{1, 1}, {7, 3}, {37, 37}, {37, 50}, {1000, 129}, {4099, 1024}, {513, 0}};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        const uint32_t n = sizes[si][0], k = sizes[si][1];
        float *w = malloc(n * sizeof *w);
        uint32_t *got = malloc((n + 1) * sizeof *got), *want = malloc((n + 1) * sizeof *want);
        for (uint32_t i = 0; i < n; i++) /* coarse values: many ties */
            w[i] = (float)(rng_u32(&r) % 97) * 0.25f;
        for (uint32_t i = 0; i <= n; i++)
            got[i] = 0xDEADBEEFu; /* poison */
        uint32_t m = skv_ref_topk(w, n, k, got), mb = brute_topk(w, n, k, want);
        assert_int_equal(m, mb);
        for (uint32_t i = 0; i < m; i++)
            assert_int_equal(got[i], want[i]);
        assert_int_equal(got[m], 0xDEADBEEFu); /* nothing past the count */
        free(w);
        free(got);
        free(want);
    }
}

static void test_overlap(void **state)
{
    (void)state;
    const uint32_t a[] = {1, 4, 5, 9, 12}, b[] = {0, 4, 9, 10, 12, 40};
    assert_int_equal(skv_ref_set_overlap(a, 5, b, 6), 3);
    assert_int_equal(skv_ref_set_overlap(a, 5, a, 5), 5);
    assert_int_equal(skv_ref_set_overlap(a, 0, b, 6), 0);
}

/* Synthetic attention over T tokens for `steps` decode steps of one head:
 *   stable:   the same favourite tokens every step;
 *   drifting: the favourites move by a quarter of the window each step;
 * a redundant head copies another's weights with small noise. */
enum { T = 2000, K = 100, STEPS = 9, HEADS = 6 };

static void attention(int kind, uint32_t step, uint32_t seed, float *w)
{
    test_rng r = {seed * 7919u + step + 1};
    for (uint32_t i = 0; i < T; i++)
        w[i] = (float)rng_uniform(&r);
    const uint32_t base = (seed * 331u) % (T - 4 * K);
    const uint32_t start = kind == 0 ? base : (base + step * (K / 4) * 3) % (T - K);
    for (uint32_t i = 0; i < K; i++)
        w[start + i] += 10.0f;
}

static void test_categories(void **state)
{
    (void)state;
    /* heads 0, 1, 2: one stable pattern (1 and 2 copy 0); 3: stable alone; 4: drifting
     * alone; 5: drifting, a copy of 4 */
    const int kind[HEADS] = {0, 0, 0, 0, 1, 1};
    const uint32_t seed[HEADS] = {1, 1, 1, 2, 3, 3};
    float *w = malloc(T * sizeof *w);
    uint32_t *sets = malloc((size_t)HEADS * STEPS * K * sizeof *sets), counts[STEPS];
    for (uint32_t h = 0; h < HEADS; h++)
        for (uint32_t t = 0; t < STEPS; t++) {
            attention(kind[h], t, seed[h], w);
            test_rng r = {h * 100u + t};
            for (uint32_t i = 0; i < T; i++) /* per-head noise below the favourites' margin */
                w[i] += 0.01f * (float)rng_uniform(&r);
            counts[t] = skv_ref_topk(w, T, K, sets + ((size_t)h * STEPS + t) * K);
            assert_int_equal(counts[t], K);
        }
    float stability[HEADS], sim[HEADS * HEADS];
    for (uint32_t h = 0; h < HEADS; h++) {
        const uint32_t *hs = sets + (size_t)h * STEPS * K;
        stability[h] = skv_ref_hetero_stability(hs, counts, STEPS, K, hs, K, K); /* ref: step 0 */
        for (uint32_t o = 0; o < HEADS; o++) { /* overlap at step 0 */
            const uint32_t *os = sets + (size_t)o * STEPS * K;
            sim[h * HEADS + o] = (float)skv_ref_set_overlap(hs, K, os, K) / K;
        }
    }
    assert_true(stability[0] > 0.9f && stability[3] > 0.9f);
    assert_true(stability[4] < 0.5f && stability[5] < 0.5f);
    skv_head_category cat[HEADS];
    uint32_t pivot[HEADS];
    for (uint32_t h = 0; h < HEADS; h++)
        cat[h] = (skv_head_category)99, pivot[h] = 99; /* poison */
    assert_ok(skv_ref_hetero_classify(HEADS, stability, sim, 0.5f, 0.5f, cat, pivot));
    /* the star of three: a pivot and two satellites; the drifting pair: a star of two */
    int pivots = 0, satellites = 0;
    for (uint32_t h = 0; h < 3; h++) {
        pivots += cat[h] == SKV_HEAD_PIVOT;
        satellites += cat[h] == SKV_HEAD_SATELLITE;
        assert_true(pivot[h] < 3 && cat[pivot[h]] == SKV_HEAD_PIVOT);
    }
    assert_int_equal(pivots, 1);
    assert_int_equal(satellites, 2);
    assert_int_equal(cat[3], SKV_HEAD_ANCHOR);
    assert_int_equal(pivot[3], 3);
    assert_true((cat[4] == SKV_HEAD_PIVOT && cat[5] == SKV_HEAD_SATELLITE && pivot[5] == 4) ||
                (cat[5] == SKV_HEAD_PIVOT && cat[4] == SKV_HEAD_SATELLITE && pivot[4] == 5));
    /* with the drifting copy gone, head 4 is volatile */
    for (uint32_t o = 0; o < HEADS; o++)
        sim[4 * HEADS + o] = sim[o * HEADS + 4] = o == 4 ? 1.0f : 0.0f;
    assert_ok(skv_ref_hetero_classify(HEADS, stability, sim, 0.5f, 0.5f, cat, pivot));
    assert_int_equal(cat[4], SKV_HEAD_VOLATILE);
    assert_int_equal(cat[5], SKV_HEAD_VOLATILE);
    /* tau_sim 1: only identical sets make a star (heads 0, 1, 2 share their top-k) */
    assert_ok(skv_ref_hetero_classify(HEADS, stability, sim, 1.0f, 0.5f, cat, pivot));
    assert_int_equal(cat[0] == SKV_HEAD_PIVOT || cat[1] == SKV_HEAD_PIVOT || cat[2] == SKV_HEAD_PIVOT, 1);
    assert_int_equal(cat[3], SKV_HEAD_ANCHOR);
    /* no similar heads at all: anchors and volatile heads only */
    for (uint32_t i = 0; i < HEADS * HEADS; i++)
        sim[i] = i % (HEADS + 1) == 0 ? 1.0f : 0.3f;
    assert_ok(skv_ref_hetero_classify(HEADS, stability, sim, 0.5f, 0.5f, cat, pivot));
    for (uint32_t h = 0; h < HEADS; h++) {
        assert_int_equal(cat[h], stability[h] >= 0.5f ? SKV_HEAD_ANCHOR : SKV_HEAD_VOLATILE);
        assert_int_equal(pivot[h], h);
    }
    assert_int_equal(skv_ref_hetero_classify(HEADS, stability, sim, 1.5f, 0.5f, cat, pivot), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_ref_hetero_classify(0, stability, sim, 0.5f, 0.5f, cat, pivot), SKV_ERR_INVALID_ARG);
    assert_string_equal(skv_head_category_str(SKV_HEAD_SATELLITE), "satellite");
    free(w);
    free(sets);
}

static void test_budgets(void **state)
{
    (void)state;
    const skv_head_category cat[5] = {SKV_HEAD_PIVOT, SKV_HEAD_SATELLITE, SKV_HEAD_ANCHOR, SKV_HEAD_VOLATILE,
                                      SKV_HEAD_ANCHOR};
    const float S[5] = {0.9f, 0.2f, 0.8f, 0.1f, 0.5f};
    const uint64_t len[5] = {1000, 1000, 1000, 1000, 1000};
    uint64_t out[5];
    assert_ok(skv_ref_hetero_budgets(5, cat, S, len, 2600, 0.05f, out));
    assert_int_equal(out[0], 1000); /* whole */
    assert_int_equal(out[3], 1000);
    /* 600 over 1/(0.25), 1/(0.85), 1/(0.55): the less stable, the more */
    const double w1 = 1 / 0.25, w2 = 1 / 0.85, w4 = 1 / 0.55, sum = w1 + w2 + w4;
    assert_true(out[1] > out[4] && out[4] > out[2]);
    assert_true(llabs((long long)out[1] - (long long)(600 * w1 / sum)) <= 1);
    assert_true(out[1] + out[2] + out[4] <= 600 && out[1] + out[2] + out[4] >= 598);
    /* a cap: the satellite holds only 100 tokens, its surplus goes to the anchors */
    const uint64_t len2[5] = {1000, 100, 1000, 1000, 1000};
    assert_ok(skv_ref_hetero_budgets(5, cat, S, len2, 2600, 0.05f, out));
    assert_int_equal(out[1], 100);
    assert_true(out[2] + out[4] >= 498 && out[2] + out[4] <= 500);
    assert_true(out[4] > out[2]);
    /* the whole heads alone over the budget */
    assert_int_equal(skv_ref_hetero_budgets(5, cat, S, len, 1999, 0.05f, out), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "more than the budget"));
    assert_int_equal(skv_ref_hetero_budgets(5, cat, S, len, 2600, 0.0f, out), SKV_ERR_INVALID_ARG);
}

/* The device top-k (cl/topk.cl) equals skv_ref_topk row by row: awkward lengths, k
 * above and below them, many ties, negative values, NaN, and poisoned outputs. */
static void test_topk_kernel(void **state)
{
    (void)state;
    skv_context *ctx = NULL;
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = getenv("SKV_TEST_DEVICE");
    skv_status st = skv_context_create(&cd, &ctx);
    if (st == SKV_ERR_NO_DEVICE)
        skip();
    assert_ok(st);
    cl_kernel k, kg;
    assert_ok(skvi_topk_kernel(ctx, &k));
    assert_ok(skvi_kernel_create(ctx, "topk.cl", NULL, "topk_gather", &kg));
    const uint32_t shapes[][3] = {/* rows, n, k */ {3, 1, 1},     {2, 37, 5},   {5, 255, 256},
                                  {4, 1000, 129}, {2, 4099, 1024}, {3, 300, 0}, {1, 70001, 1024}};
    test_rng r = {5};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const uint32_t rows = shapes[si][0], n = shapes[si][1], kk = shapes[si][2];
        const uint32_t ws = n + 3, os = kk + 2; /* strides wider than the rows */
        float *w = malloc((size_t)rows * ws * sizeof *w);
        uint32_t *got = malloc((size_t)rows * os * sizeof *got), *want = malloc((n + 1) * sizeof *want);
        uint32_t *counts = malloc(rows * sizeof *counts);
        for (size_t i = 0; i < (size_t)rows * ws; i++) {
            const uint32_t u = rng_u32(&r);
            w[i] = si % 2 ? (float)(u % 61) * 0.125f - 2.0f : (float)rng_uniform(&r) * 1e-3f; /* ties; tiny */
            if (u % 997 == 0)
                w[i] = NAN;
            if (u % 1009 == 0)
                w[i] = -0.0f;
        }
        cl_int e;
        cl_mem wb = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)rows * ws * 4, w, &e);
        assert_int_equal(e, CL_SUCCESS);
        for (size_t i = 0; i < (size_t)rows * os; i++)
            got[i] = 0xDEADBEEFu;
        for (uint32_t i = 0; i < rows; i++)
            counts[i] = 0xDEADBEEFu;
        cl_mem ob = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, (size_t)rows * os * 4, got, &e);
        cl_mem cb = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, rows * 4, counts, &e);
        assert_ok(skvi_topk_enqueue(ctx, k, wb, rows, n, ws, kk, ob, os, cb));
        assert_int_equal(clEnqueueReadBuffer(ctx->queue, ob, CL_TRUE, 0, (size_t)rows * os * 4, got, 0, NULL, NULL),
                         CL_SUCCESS);
        assert_int_equal(clEnqueueReadBuffer(ctx->queue, cb, CL_TRUE, 0, rows * 4, counts, 0, NULL, NULL), CL_SUCCESS);
        /* the selected weights (topk_gather), poisoned first */
        float *gw = malloc(((size_t)rows * os + 1) * sizeof *gw);
        for (size_t i = 0; i < (size_t)rows * os; i++)
            gw[i] = -12345.0f;
        cl_mem gb = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, ((size_t)rows * os + 1) * 4, gw,
                                   &e);
        assert_ok(skvi_topk_gather_enqueue(ctx, kg, wb, rows, ws, ob, os, cb, gb));
        assert_int_equal(clEnqueueReadBuffer(ctx->queue, gb, CL_TRUE, 0, (size_t)rows * os * 4, gw, 0, NULL, NULL),
                         CL_SUCCESS);
        for (uint32_t row = 0; row < rows; row++)
            for (uint32_t i = 0; i < os; i++) {
                const float *g = gw + (size_t)row * os + i;
                if (i < counts[row])
                    assert_memory_equal(g, w + (size_t)row * ws + got[(size_t)row * os + i], sizeof *g);
                else
                    assert_true(*g == -12345.0f);
            }
        clReleaseMemObject(gb);
        free(gw);
        for (uint32_t row = 0; row < rows; row++) {
            const uint32_t m = skv_ref_topk(w + (size_t)row * ws, n, kk, want);
            assert_int_equal(counts[row], m);
            for (uint32_t i = 0; i < m; i++)
                if (got[(size_t)row * os + i] != want[i])
                    fail_msg("n %u k %u row %u: item %u is %u, the reference %u", n, kk, row, i,
                             got[(size_t)row * os + i], want[i]);
            for (uint32_t i = m; i < os; i++) /* nothing written past the count */
                assert_int_equal(got[(size_t)row * os + i], 0xDEADBEEFu);
        }
        clReleaseMemObject(wb);
        clReleaseMemObject(ob);
        clReleaseMemObject(cb);
        free(w);
        free(got);
        free(want);
        free(counts);
    }
    clReleaseKernel(k);
    clReleaseKernel(kg);
    skv_context_destroy(ctx);
}

/* ---- HeteroCache on the cache ------------------------------------------------------ */

static skv_context *open_ctx(const skv_allocator *alloc)
{
    skv_context *ctx = NULL;
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = getenv("SKV_TEST_DEVICE");
    cd.allocator = alloc;
    skv_status st = skv_context_create(&cd, &ctx);
    if (st == SKV_ERR_NO_DEVICE)
        skip();
    assert_ok(st);
    return ctx;
}

/* Attention of q-head qh (G = 1) over tokens [first, first + n) of kv-head qh of
 * k, v [tokens][H][D], in fp64 on the fp16-rounded values the cache stores. */
static void ref_head(const float *q, const float *k, const float *v, uint32_t H, uint32_t D, uint32_t head,
                     const uint8_t *keep, uint32_t tokens, float scale, double *out)
{
    double m = -INFINITY, sum = 0;
    double *w = calloc(tokens, sizeof *w);
    for (uint32_t t = 0; t < tokens; t++) {
        if (keep && !keep[t])
            continue;
        double dot = 0;
        for (uint32_t d = 0; d < D; d++)
            dot += (double)q[d] * skv_ref_f16_to_f32(skv_ref_f32_to_f16(k[((size_t)t * H + head) * D + d]));
        w[t] = dot * scale;
        m = w[t] > m ? w[t] : m;
    }
    for (uint32_t d = 0; d < D; d++)
        out[d] = 0;
    for (uint32_t t = 0; t < tokens; t++) {
        if (keep && !keep[t])
            continue;
        const double p = exp(w[t] - m);
        sum += p;
        for (uint32_t d = 0; d < D; d++)
            out[d] += p * skv_ref_f16_to_f32(skv_ref_f32_to_f16(v[((size_t)t * H + head) * D + d]));
    }
    for (uint32_t d = 0; d < D; d++)
        out[d] /= sum;
    free(w);
}

static void append_all(skv_cache *c, skv_seq_id s, uint32_t layer, const float *k, const float *v, uint32_t first,
                       uint32_t n, uint32_t H, uint32_t D, uint32_t chunk)
{
    int32_t *pos = malloc(chunk * sizeof *pos);
    for (uint32_t t = first; t < first + n; t += chunk) {
        const uint32_t m = first + n - t < chunk ? first + n - t : chunk;
        for (uint32_t i = 0; i < m; i++)
            pos[i] = (int32_t)(t + i);
        assert_ok(skv_append(c, s, layer, m, SKV_F32, k + (size_t)t * H * D, v + (size_t)t * H * D, pos));
    }
    free(pos);
}

/* Decode of a sequence whose kv-heads hold different pages on the device
 * (skv_seq_offload_head) attends over exactly those, per head; fetching them back
 * restores the full result. */
static void test_decode_head_pages(void **state)
{
    (void)state;
    skv_context *ctx = open_ctx(NULL);
    const uint32_t H = 3, D = 64, P = 16, N = 203;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = H, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.host_budget_bytes = 1 << 22;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {77};
    float *k = malloc((size_t)N * H * D * 4), *v = malloc((size_t)N * H * D * 4), q[3 * 64], out[3 * 64];
    for (size_t i = 0; i < (size_t)N * H * D; i++)
        k[i] = test_gauss(&r), v[i] = test_gauss(&r);
    for (size_t i = 0; i < H * D; i++)
        q[i] = test_gauss(&r) * 0.3f;
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    append_all(c, s, 0, k, v, 0, N, H, D, 61);
    append_all(c, s, 1, k, v, 0, 40, H, D, 40);
    /* head 1 of layer 0 loses pages 1..8 (tokens 16..143), head 2 pages 0..11 */
    assert_ok(skv_seq_offload_head(c, s, 0, 1, 16, 144));
    assert_ok(skv_seq_offload_head(c, s, 0, 2, 0, 200)); /* the tail page (192..202) stays */
    uint64_t host;
    assert_ok(skv_seq_host_pages(c, s, &host));
    assert_int_equal(host, 8 + 12);
    uint8_t *keep = malloc(N);
    const float scale = 0.125f;
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < H * D; i++)
            out[i] = NAN; /* poison */
        assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, scale, SKV_F32, out));
        for (uint32_t h = 0; h < H; h++) {
            for (uint32_t t = 0; t < N; t++)
                keep[t] = round == 1 || h == 0 || (h == 1 && (t < 16 || t >= 144)) || (h == 2 && t >= 192);
            double ref[64];
            ref_head(q + h * D, k, v, H, D, h, keep, N, scale, ref);
            const double e = skv_ref_rel_l2(ref, out + h * D, D);
            if (!(e < 2e-5))
                fail_msg("round %d head %u: relative error %g", round, h, e);
        }
        if (round == 0) { /* back, and decode right away (no host wait) */
            assert_ok(skv_seq_fetch_head(c, s, 0, 1, 0, N));
            assert_ok(skv_seq_fetch_head(c, s, 0, 2, 0, N));
        }
    }
    /* out of range, and a head with nothing on the device */
    assert_int_equal(skv_seq_offload_head(c, s, 2, 0, 0, 10), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_offload_head(c, s, 0, 3, 0, 10), SKV_ERR_INVALID_ARG);
    assert_ok(skv_seq_offload_head(c, s, 1, 0, 0, 40)); /* 32 of 40: the tail page stays */
    assert_ok(skv_attention_decode(c, 1, &s, 1, SKV_F32, q, scale, SKV_F32, out));
    free(k), free(v), free(keep);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
}

/* Calibration on the device: heads built to be a stable pattern and its copy, stable
 * alone, and drifting come out pivot, satellite, anchor and volatile; the profile's
 * stability agrees with the same statistic computed in C from the same steps. */
static void test_calibration(void **state)
{
    (void)state;
    skv_context *ctx = open_ctx(NULL);
    const uint32_t L = 2, H = 4, D = 64, N = 515, TOPK = 32, N_STEPS = 9;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = H, d.kv_heads = H, d.head_dim = D, d.page_tokens = 32;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {4242};
    float *k = malloc((size_t)N * H * D * 4), *v = malloc((size_t)N * H * D * 4);
    for (uint32_t t = 0; t < N; t++)
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t i = 0; i < D; i++) {
                const size_t at = ((size_t)t * H + h) * D + i;
                k[at] = h == 1 ? k[at - D] : test_gauss(&r); /* head 1 copies head 0 */
                v[at] = test_gauss(&r);
            }
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    for (uint32_t l = 0; l < L; l++)
        append_all(c, s, l, k, v, 0, N, H, D, 100);
    skv_hetero_desc hd;
    skv_hetero_desc_init(&hd);
    hd.top_k = TOPK;
    assert_int_equal(skv_hetero_calibrate_begin(c, s, NULL), SKV_ERR_INVALID_ARG);
    assert_ok(skv_hetero_calibrate_begin(c, s, &hd));
    assert_int_equal(skv_hetero_calibrate_begin(c, s, &hd), SKV_ERR_INVALID_ARG); /* one at a time */
    skv_hetero_profile *prof = NULL;
    assert_int_equal(skv_hetero_calibrate_end(c, s, &prof), SKV_ERR_INVALID_ARG); /* no step yet */
    float base[4][64], q[4 * 64], out[4 * 64];
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t i = 0; i < D; i++)
            base[h][i] = test_gauss(&r);
    uint32_t *sets = malloc((size_t)N_STEPS * H * TOPK * 4), counts[9][4];
    float *w = malloc(N * sizeof *w);
    for (uint32_t t = 0; t < N_STEPS; t++) {
        for (uint32_t i = 0; i < D; i++) {
            const float noise = 0.05f * test_gauss(&r);
            q[0 * D + i] = q[1 * D + i] = base[0][i] + noise; /* the pattern and its copy */
            q[2 * D + i] = base[2][i] + 0.05f * test_gauss(&r);
            q[3 * D + i] = test_gauss(&r); /* a new query every step */
        }
        for (uint32_t l = 0; l < L; l++)
            assert_ok(skv_attention_decode(c, l, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out));
        for (uint32_t h = 0; h < H; h++) { /* the same step's top-k in C, on the stored keys */
            for (uint32_t j = 0; j < N; j++) {
                double dot = 0;
                for (uint32_t i = 0; i < D; i++)
                    dot += q[h * D + i] * skv_ref_f16_to_f32(skv_ref_f32_to_f16(k[((size_t)j * H + h) * D + i]));
                w[j] = (float)dot;
            }
            counts[t][h] = skv_ref_topk(w, N, TOPK, sets + ((size_t)t * H + h) * TOPK);
        }
    }
    assert_ok(skv_hetero_calibrate_end(c, s, &prof));
    const skv_head_category want[4] = {SKV_HEAD_PIVOT, SKV_HEAD_SATELLITE, SKV_HEAD_ANCHOR, SKV_HEAD_VOLATILE};
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            skv_head_category cat;
            uint32_t pv;
            float S;
            assert_ok(skv_hetero_profile_head(prof, l, h, &cat, &pv, &S));
            if (cat != want[h])
                fail_msg("layer %u head %u: %s (S %.3f), designed %s", l, h, skv_head_category_str(cat), (double)S,
                         skv_head_category_str(want[h]));
            assert_int_equal(pv, h == 1 ? 0 : h);
            uint32_t hc[8];
            for (uint32_t t = 1; t < N_STEPS; t++)
                hc[t - 1] = counts[t][h];
            const float S_c = skv_ref_hetero_stability(sets + ((size_t)H + h) * TOPK, hc, N_STEPS - 1, H * TOPK,
                                                       sets + (size_t)h * TOPK, counts[0][h], TOPK);
            if (!(fabsf(S - S_c) <= 2.0f / TOPK)) /* the top-k boundary may round differently */
                fail_msg("layer %u head %u: stability %.4f, in C %.4f", l, h, (double)S, (double)S_c);
        }
    assert_int_equal(skv_hetero_calibrate_end(c, s, &prof), SKV_ERR_INVALID_ARG); /* closed */
    skv_hetero_profile_free(prof);
    /* abort drops an open calibration */
    assert_ok(skv_hetero_calibrate_begin(c, s, &hd));
    assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out));
    assert_ok(skv_hetero_calibrate_abort(c, s));
    assert_int_equal(skv_hetero_calibrate_abort(c, s), SKV_ERR_INVALID_ARG);
    free(k), free(v), free(sets), free(w);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Profiles round-trip through their file; a malformed one, another version, or one for
 * another shape is rejected with a message and leaves *out untouched. */
static void test_profile_file(void **state)
{
    (void)state;
    const skv_head_category cat[6] = {SKV_HEAD_PIVOT, SKV_HEAD_SATELLITE, SKV_HEAD_ANCHOR,
                                      SKV_HEAD_VOLATILE, SKV_HEAD_SATELLITE, SKV_HEAD_PIVOT};
    const uint32_t pivot[6] = {0, 0, 2, 1, 2, 2};
    const float stab[6] = {0.75f, 0.5f, 0.8f, 0.125f, 0.3f, 0.6f};
    skv_hetero_profile *p = NULL, *q = NULL;
    /* layer 1: a volatile head names another pivot, a satellite's pivot is not one */
    assert_int_equal(skv_hetero_profile_create(2, 3, cat, pivot, stab, &p), SKV_ERR_INVALID_ARG);
    assert_null(p);
    skv_head_category cat2[6];
    memcpy(cat2, cat, sizeof cat2);
    cat2[3] = SKV_HEAD_PIVOT; /* layer 1: pivot 0 with satellite 1, pivot 2 */
    const uint32_t pv2[6] = {0, 0, 2, 0, 0, 2};
    assert_ok(skv_hetero_profile_create(2, 3, cat2, pv2, stab, &p));
    char *dir = test_tmpdir("hetero"), path[600], bad[600];
    snprintf(path, sizeof path, "%s/profile.txt", dir);
    snprintf(bad, sizeof bad, "%s/bad.txt", dir);
    assert_ok(skv_hetero_profile_save(p, path));
    assert_ok(skv_hetero_profile_load(path, 2, 3, &q));
    for (uint32_t i = 0; i < 6; i++) {
        skv_head_category a, b;
        uint32_t pa, pb;
        float sa, sb;
        assert_ok(skv_hetero_profile_head(p, i / 3, i % 3, &a, &pa, &sa));
        assert_ok(skv_hetero_profile_head(q, i / 3, i % 3, &b, &pb, &sb));
        assert_int_equal(a, b);
        assert_int_equal(pa, pb);
        assert_true(sa == sb);
    }
    skv_hetero_profile_free(q);
    skv_hetero_profile *untouched = (skv_hetero_profile *)&q; /* a sentinel: must survive a failed load */
    q = untouched;
    assert_int_equal(skv_hetero_profile_load(path, 3, 3, &q), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "not 3 x 3"));
    assert_ptr_equal(q, untouched);
    const char *cases[] = {
        "",
        "skv-hetero-profile 2\nlayers 1 kv_heads 1\n0 0 anchor 0 1\nend\n",
        "skv-hetero-profile 1\nlayers 1 kv_heads 2\n0 0 pivot 0 1\nend\n",              /* a head missing */
        "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1\n",                   /* no end */
        "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1\nend\nmore\n",        /* data after end */
        "skv-hetero-profile 1\nlayers 1 kv_heads 2\n0 0 anchor 0 1\n0 1 satellite 0 1\nend\n", /* not a pivot */
        "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1.5\nend\n",            /* stability > 1 */
        "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 leader 0 1\nend\n",              /* no such category */
        "skv-hetero-profile 1\nlayers 0 kv_heads 1\nend\n",
        "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 nan\nend\n",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(bad, cases[i]);
        q = untouched;
        if (skv_hetero_profile_load(bad, 0, 0, &q) != SKV_ERR_INVALID_ARG)
            fail_msg("case %zu loaded", i);
        assert_ptr_equal(q, untouched);
    }
    write_text(bad, "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1\nend\n");
    assert_ok(skv_hetero_profile_load(bad, 0, 0, &q));
    skv_hetero_profile_free(q);
    remove(path);
    remove(bad);
    remove(dir); /* an empty folder */
    free(dir);
    skv_hetero_profile_free(p);
}

static double wall_ms(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Large and hostile profile files: 64 layers x 4096 kv-heads (5.5 MB) load in linear time
 * (the parser once ran sscanf over the rest of the file for every head: 41 s for this
 * file, an hour for a 64 MiB one), and a header claiming 4096 x 4096 heads in a few bytes
 * is refused by its length before 200 MB are allocated for them; a FIFO at the path is
 * refused, not waited on. */
static void test_profile_file_large(void **state)
{
    (void)state;
    const uint32_t L = 64, H = 4096;
    skv_head_category *cat = malloc((size_t)L * H * sizeof *cat);
    uint32_t *pivot = malloc((size_t)L * H * sizeof *pivot);
    assert_non_null(cat), assert_non_null(pivot);
    for (size_t i = 0; i < (size_t)L * H; i++)
        cat[i] = i % 3 ? SKV_HEAD_ANCHOR : SKV_HEAD_VOLATILE, pivot[i] = (uint32_t)(i % H);
    skv_hetero_profile *p = NULL, *q = NULL;
    assert_ok(skv_hetero_profile_create(L, H, cat, pivot, NULL, &p));
    char *dir = test_tmpdir("hetero_large"), path[600];
    snprintf(path, sizeof path, "%s/profile.txt", dir);
    assert_ok(skv_hetero_profile_save(p, path));
    const double t0 = wall_ms();
    assert_ok(skv_hetero_profile_load(path, L, H, &q));
    const double ms = wall_ms() - t0;
    if (ms > 3000)
        fail_msg("loading a %u x %u profile took %.0f ms", L, H, ms);
    skv_head_category c;
    uint32_t pv;
    assert_ok(skv_hetero_profile_head(q, L - 1, H - 1, &c, &pv, NULL));
    assert_int_equal(c, cat[(size_t)L * H - 1]);
    skv_hetero_profile_free(q);
    write_text(path, "skv-hetero-profile 1\nlayers 4096 kv_heads 4096\n0 0 pivot 0 1\nend\n");
    q = NULL;
    assert_int_equal(skv_hetero_profile_load(path, 0, 0, &q), SKV_ERR_INVALID_ARG);
    assert_null(q);
    assert_non_null(strstr(skv_last_error(), "do not fit"));
    /* a FIFO (and a folder) where the profile should be: an error at once, not a hang */
    remove(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    alarm(300); /* a hang is a failure, not a stuck test run */
    assert_int_equal(skv_hetero_profile_load(path, 0, 0, &q), SKV_ERR_IO);
    assert_non_null(strstr(skv_last_error(), "not a regular file"));
    assert_int_equal(skv_hetero_profile_load(dir, 0, 0, &q), SKV_ERR_IO);
    alarm(0);
    assert_null(q);
    remove(path);
    remove(dir);
    free(dir);
    skv_hetero_profile_free(p);
    free(cat), free(pivot);
}

/* A new HeteroCache sequence on a one-layer cache of 4 kv-heads: head 0 a pivot, heads
 * 1..3 its satellites. */
static skv_seq_id star_seq(skv_cache *c, const skv_hetero_desc *hd)
{
    const skv_head_category cat[4] = {SKV_HEAD_PIVOT, SKV_HEAD_SATELLITE, SKV_HEAD_SATELLITE, SKV_HEAD_SATELLITE};
    const uint32_t pivot[4] = {0, 0, 0, 0};
    skv_hetero_profile *prof;
    assert_ok(skv_hetero_profile_create(1, 4, cat, pivot, NULL, &prof));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_seq_hetero(c, s, prof, hd));
    skv_hetero_profile_free(prof);
    return s;
}

/* The planted shift: a needle no early query attends to, that a late query attends to
 * almost alone. A pivot (head 0, its whole cache on the device) and three satellites
 * with its keys; the satellites' shares hold the sinks, the recent pages and the newest
 * others, so the needle's page is in host memory when the shift comes. With retrieval
 * the satellites' output after the shift matches the full-cache attention; without it
 * it does not. fail_at: the context's allocation that fails (0: none), armed just before
 * the step that retrieves. */
typedef struct needle_result {
    double sat_err_before, sat_err_after, pivot_err;
    size_t sat_tokens;   /* a satellite's resident copies at the end */
    uint32_t needle_held; /* satellites holding the needle at the end */
    skv_hetero_stats st;
} needle_result;

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void needle_run(int retrieval, int fail_retrieval, needle_result *res)
{
    counting_allocator counter = {0, 0, 0};
    skv_allocator alloc = {counting_alloc, counting_free, &counter};
    skv_context *ctx = open_ctx(&alloc);
    const uint32_t H = 4, D = 64, P = 16, N = 1024, NEEDLE = 300;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = H, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.host_budget_bytes = 1 << 24;
    d.retention = SKV_RETENTION_RDR, d.scorer = SKV_SCORER_KNORM, d.budget_ratio = 0.55f;
    d.tiers = (1u << SKV_TIER_COUNT) - 1; /* the satellites' resident tokens go to A4V8 */
    d.n_sink = 4, d.recent_window = 32, d.slack = 32;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {99};
    float u[64], qe[64], norm = 0, proj = 0;
    for (uint32_t i = 0; i < D; i++)
        u[i] = test_gauss(&r), norm += u[i] * u[i];
    for (uint32_t i = 0; i < D; i++)
        u[i] /= sqrtf(norm);
    for (uint32_t i = 0; i < D; i++)
        qe[i] = test_gauss(&r), proj += qe[i] * u[i];
    for (uint32_t i = 0; i < D; i++)
        qe[i] -= proj * u[i]; /* the early query ignores the needle */
    float *k = malloc((size_t)N * H * D * 4), *v = malloc((size_t)N * H * D * 4);
    for (uint32_t t = 0; t < N; t++)
        for (uint32_t i = 0; i < D; i++) {
            const float key = t == NEEDLE ? 4.0f * u[i] : 0.3f * test_gauss(&r);
            for (uint32_t h = 0; h < H; h++) {
                k[((size_t)t * H + h) * D + i] = key; /* every head the pivot's keys */
                v[((size_t)t * H + h) * D + i] = test_gauss(&r);
            }
        }
    skv_hetero_desc hd;
    skv_hetero_desc_init(&hd);
    hd.top_k = 16;
    hd.retrieval = retrieval;
    const skv_seq_id s = star_seq(c, &hd);
    append_all(c, s, 0, k, v, 0, N, H, D, 64); /* compressions place the satellites */
    uint64_t host;
    assert_ok(skv_seq_host_pages(c, s, &host));
    assert_true(host > 0);
    float q[4 * 64], out[4 * 64];
    double ref[64];
    const float scale = 0.125f;
    for (uint32_t step = 0; step < 18; step++) {
        const int late = step >= 10;
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t i = 0; i < D; i++)
                q[h * D + i] = late ? 28.0f * u[i] + 0.1f * qe[i] : qe[i];
        if (fail_retrieval && step == 11)
            counter.fail_at = counter.calls + 1; /* the retrieval's first allocation */
        for (size_t i = 0; i < H * D; i++)
            out[i] = NAN;
        assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, scale, SKV_F32, out));
        counter.fail_at = 0;
        assert_ok(skv_context_finish(ctx)); /* fetched pages arrive before the next step */
        double worst = 0;
        for (uint32_t h = 1; h < H; h++) {
            ref_head(q + h * D, k, v, H, D, h, NULL, N, scale, ref);
            const double e = skv_ref_rel_l2(ref, out + h * D, D);
            worst = e > worst ? e : worst;
        }
        if (step == 9)
            res->sat_err_before = worst;
        if (step == 17)
            res->sat_err_after = worst;
        ref_head(q, k, v, H, D, 0, NULL, N, scale, ref);
        const double ep = skv_ref_rel_l2(ref, out, D);
        res->pivot_err = ep > res->pivot_err ? ep : res->pivot_err;
    }
    /* token-granular satellites: a satellite's positions (skv_seq_positions: its F16 list,
     * device and host pages, in append order, then its resident copies) are every token
     * once, then copies of distinct tokens outside the pages the device keeps at F16 (the
     * sinks' page, the recent window's, the tail): nothing is read twice; the needle is
     * among them after a retrieval */
    int32_t *held = malloc((size_t)2 * N * sizeof *held);
    for (uint32_t h = 1; h < H; h++) {
        size_t count = 0;
        assert_ok(skv_seq_positions(c, s, 0, h, held, 2 * N, &count));
        assert_true(count > N);
        for (uint32_t t = 0; t < N; t++)
            assert_int_equal(held[t], (int32_t)t);
        res->sat_tokens = count - N;
        qsort(held + N, count - N, sizeof *held, cmp_i32);
        int needle = 0;
        for (size_t i = N; i < count; i++) {
            assert_true(held[i] >= (int32_t)P && held[i] < (int32_t)((N - 32) / P * P));
            if (i > N)
                assert_true(held[i] != held[i - 1]);
            needle |= held[i] == (int32_t)NEEDLE;
        }
        res->needle_held += needle;
    }
    free(held);
    res->st.struct_size = sizeof res->st;
    assert_ok(skv_cache_hetero_stats(c, &res->st));
    /* the sequence refuses what would move its pages behind HeteroCache's back */
    assert_int_equal(skv_seq_offload(c, s, 0, N), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_quantize(c, s, 0, N, SKV_TIER_A4V8), SKV_ERR_INVALID_ARG);
    skv_seq_id child;
    assert_int_equal(skv_seq_fork(c, s, &child), SKV_ERR_UNSUPPORTED);
    free(k), free(v);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    assert_int_equal(counter.live, 0);
}

static void test_retrieval(void **state)
{
    (void)state;
    needle_result on = {0}, off = {0}, fault = {0};
    needle_run(1, 0, &on);
    needle_run(0, 0, &off);
    needle_run(1, 1, &fault);
    printf("satellites' error after the shift: retrieval %.4f, none %.4f, after a failed retrieval %.4f; "
           "retrievals %llu, tokens fetched %llu, pages evicted %llu\n",
           on.sat_err_after, off.sat_err_after, fault.sat_err_after, (unsigned long long)on.st.retrievals,
           (unsigned long long)on.st.tokens_fetched, (unsigned long long)on.st.pages_evicted);
    /* the pivot holds everything: always right */
    assert_true(on.pivot_err < 2e-3 && off.pivot_err < 2e-3 && fault.pivot_err < 2e-3);
    /* before the shift the satellites' shares are fine either way (the needle is not
     * attended); after it only retrieval brings the needle back */
    assert_true(on.st.drifts >= 1 && on.st.retrievals >= 3 && on.st.tokens_fetched >= 3);
    assert_true(on.sat_err_after < 0.02);
    assert_true(off.sat_err_after > 0.5);
    assert_int_equal(off.st.retrievals, 0);
    assert_true(off.st.drifts >= 1);
    assert_int_equal(on.needle_held, 3);
    assert_int_equal(off.needle_held, 0);
    assert_true(on.sat_tokens > 16 && on.sat_tokens < 1024 - 64);
    /* a failed retrieval changes nothing, decode goes on, and the next check retries */
    assert_true(fault.st.retrievals_failed >= 1);
    assert_true(fault.st.retrievals >= 3);
    assert_true(fault.sat_err_after < 0.02);
}

/* A randomized run of a HeteroCache sequence (one pivot, three satellites; appends of 1
 * to 48 tokens, decode steps whose query switches among three needles and ordinary
 * directions so the pivot drifts, explicit compressions; one operation in eight with its
 * k-th host allocation failing, one in eight with its i-th OpenCL call failing), checked
 * after every operation: each satellite holds
 * every appended token once in its F16 list and resident copies of distinct tokens
 * outside the pages the device keeps at F16 (so decode reads no token twice), and its
 * decode output is the attention over exactly those tokens, as the cache stores them
 * (fp16; the resident ones as the C references encode and decode A4V8), within 1e-3; at
 * the end nothing is left allocated. */
static void test_hetero_stress(void **state)
{
    (void)state;
    counting_allocator counter = {0, 0, 0};
    skv_allocator alloc = {counting_alloc, counting_free, &counter};
    skv_context *ctx = open_ctx(&alloc);
    enum { H = 4, D = 64, P = 16, N = 700, OPS = 400 };
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = H, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.host_budget_bytes = 1 << 24;
    d.retention = SKV_RETENTION_RDR, d.scorer = SKV_SCORER_KEYDIFF, d.budget_ratio = 0.45f;
    d.tiers = (1u << SKV_TIER_COUNT) - 1;
    d.n_sink = 4, d.recent_window = 24, d.slack = 32;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {2718};
    float *k = malloc((size_t)N * H * D * 4), *v = malloc((size_t)N * H * D * 4), dirs[5][D];
    for (int j = 0; j < 5; j++)
        for (uint32_t i = 0; i < D; i++)
            dirs[j][i] = test_gauss(&r);
    for (uint32_t t = 0; t < N; t++) {
        const int needle = t % 97 == 41 ? (int)(t / 97 % 3) : -1; /* planted keys late queries find */
        for (uint32_t i = 0; i < D; i++) {
            const float key = needle >= 0 ? 0.5f * dirs[needle][i] : 0.4f * test_gauss(&r);
            for (uint32_t h = 0; h < H; h++) {
                k[((size_t)t * H + h) * D + i] = key + 0.02f * test_gauss(&r);
                v[((size_t)t * H + h) * D + i] = test_gauss(&r);
            }
        }
    }
    skv_hetero_desc hd;
    skv_hetero_desc_init(&hd);
    hd.top_k = 24, hd.check_steps = 2;
    const skv_seq_id s = star_seq(c, &hd);
    uint32_t len = 0, faults = 0, cl_faults = 0, failed = 0;
    int32_t pos[48], *held = malloc((size_t)4 * N * sizeof *held);
    uint8_t *keep = malloc(N);
    float *kk = malloc((size_t)N * D * sizeof *kk), *vv = malloc((size_t)N * D * sizeof *vv);
    double *wt = malloc(N * sizeof *wt);
    float q[H * D], out[H * D];
    double ref[D];
    for (uint32_t op = 0; op < OPS; op++) {
        const uint32_t kind = len < 40 ? 0 : rng_u32(&r) % 6; /* 0-1 append, 2-4 decode, 5 compress */
        const uint32_t f = rng_u32(&r) % 8; /* 0: an allocation fails, 1: an OpenCL call */
        const int fault = f <= 1;
        if (f == 0)
            counter.fail_at = counter.calls + 1 + rng_u32(&r) % 12, faults++;
        else if (f == 1)
            cl_fault_at = cl_fault_calls + (long)(rng_u32(&r) % 40), cl_faults++;
        cl_fault_name = "";
        skv_status st = SKV_OK;
        if (kind <= 1 && len < N) {
            const uint32_t n = 1 + rng_u32(&r) % 48 < N - len ? 1 + rng_u32(&r) % 48 : N - len;
            for (uint32_t i = 0; i < n; i++)
                pos[i] = (int32_t)(len + i);
            st = skv_append(c, s, 0, n, SKV_F32, k + (size_t)len * H * D, v + (size_t)len * H * D, pos);
            if (st == SKV_OK)
                len += n;
        } else if (kind <= 4) {
            const float *dir = dirs[(op / 7) % 5]; /* a direction held for a few steps, then another */
            for (uint32_t h = 0; h < H; h++)
                for (uint32_t i = 0; i < D; i++)
                    q[h * D + i] = 3.0f * dir[i] + 0.1f * test_gauss(&r);
            st = skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out);
        } else {
            st = skv_compress(c, s);
        }
        counter.fail_at = 0;
        cl_fault_at = -1;
        failed += st != SKV_OK;
        if (!fault || (f == 1 && cl_fault_absorbable())) /* a flush or a status query: absorbed */
            assert_ok(st);
        assert_ok(skv_context_finish(ctx));
        /* the invariants, after a decode step that is checked (it may place satellites) */
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t i = 0; i < D; i++)
                q[h * D + i] = 3.0f * dirs[op % 5][i];
        for (size_t i = 0; i < H * D; i++)
            out[i] = NAN;
        assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out));
        for (uint32_t h = 1; h < H; h++) {
            size_t count = 0;
            assert_ok(skv_seq_positions(c, s, 0, h, held, 4 * N, &count));
            assert_true(count >= len);
            for (uint32_t t = 0; t < len; t++)
                assert_int_equal(held[t], (int32_t)t);
            /* the F16 pages on the device: the sinks', the recent window's and the tail, as of
             * the last placement (a page the window has left since goes to the host at the
             * next one) */
            const skvi_page_list *fl = &c->seqs[s].lists[(size_t)h * SKV_TIER_COUNT + SKV_TIER_F16];
            assert_int_equal(fl->tokens, len);
            const uint32_t recent_first = len > 24 ? len - 24 : 0;
            for (uint32_t t = 0; t < len; t++) {
                const uint32_t j = t / P;
                keep[t] = !(fl->ids[j] & SKVI_HOST_BIT);
                if (j * P < 4 || (j + 1) * P > recent_first || j + 1 == fl->n)
                    assert_true(keep[t]); /* protected pages never leave the device */
            }
            for (size_t i = len; i < count; i++) {
                const int32_t p = held[i];
                if (!(p >= 0 && (uint32_t)p < len && !keep[p]))
                    fail_msg("op %u: satellite %u holds position %d twice or out of range (length %u)", op, h, p, len);
                keep[p] = 2;
            }
            /* the attention over those tokens as the cache stores them: fp16, and the resident
             * ones as the C references encode and decode A4V8 (cf. test_soak) */
            int8_t signs[D];
            skv_ref_ada_signs_seeded(0, 0, h, D, signs);
            const skv_ref_ada_params *ap = &c->ada[SKV_TIER_A4V8];
            const skvi_tier_desc *td = &skvi_tiers[SKV_TIER_A4V8];
            double m = -INFINITY, sum = 0;
            for (uint32_t t = 0; t < len; t++) {
                if (!keep[t])
                    continue;
                float *kt = kk + (size_t)t * D, *vt = vv + (size_t)t * D;
                for (uint32_t i = 0; i < D; i++) {
                    kt[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(k[((size_t)t * H + h) * D + i]));
                    vt[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(v[((size_t)t * H + h) * D + i]));
                }
                if (keep[t] == 2) {
                    uint32_t words[D];
                    uint16_t norm;
                    uint8_t codes[2 * D + 64];
                    skv_ref_ada_encode_key(ap, signs, kt, words, &norm);
                    skv_ref_ada_decode_key(ap, signs, words, norm, kt);
                    skv_ref_value_encode(vt, D, td->value_bits, td->value_group, codes);
                    skv_ref_value_decode(codes, D, td->value_bits, td->value_group, vt);
                }
                double dot = 0;
                for (uint32_t i = 0; i < D; i++)
                    dot += (double)q[h * D + i] * kt[i];
                wt[t] = 0.125 * dot;
                m = wt[t] > m ? wt[t] : m;
            }
            for (uint32_t i = 0; i < D; i++)
                ref[i] = 0;
            for (uint32_t t = 0; t < len; t++)
                if (keep[t]) {
                    const double p = exp(wt[t] - m);
                    sum += p;
                    for (uint32_t i = 0; i < D; i++)
                        ref[i] += p * vv[(size_t)t * D + i];
                }
            for (uint32_t i = 0; i < D; i++)
                ref[i] /= sum;
            const double e = skv_ref_rel_l2(ref, out + h * D, D);
            if (!(e < 1e-3)) {
                uint64_t hp = 0;
                skv_seq_host_pages(c, s, &hp);
                uint32_t nk = 0, nr = 0;
                for (uint32_t t = 0; t < len; t++)
                    nk += keep[t] == 1, nr += keep[t] == 2;
                fail_msg("op %u (kind %u, fault %d, st %d): satellite %u's output is %.3g from the attention over "
                         "what it holds (length %u, %zu positions, %u kept F16, %u resident, %llu host pages)",
                         op, kind, fault, (int)st, h, e, len, count, nk, nr, (unsigned long long)hp);
            }
        }
    }
    skv_hetero_stats hs = {.struct_size = sizeof hs};
    assert_ok(skv_cache_hetero_stats(c, &hs));
    print_message("%u ops to %u tokens, %u with a failing allocation and %u with a failing OpenCL call (%u "
                  "failed); drifts %llu, retrievals %llu (%llu failed), tokens fetched %llu\n",
                  OPS, len, faults, cl_faults, failed, (unsigned long long)hs.drifts, (unsigned long long)hs.retrievals,
                  (unsigned long long)hs.retrievals_failed, (unsigned long long)hs.tokens_fetched);
    assert_true(hs.drifts > 0 && hs.retrievals > 0 && hs.tokens_fetched > 0);
    free(k), free(v), free(held), free(keep), free(kk), free(vv), free(wt);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    assert_int_equal(counter.live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_topk_kernel),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_categories),
        cmocka_unit_test(test_budgets),
        cmocka_unit_test(test_decode_head_pages),
        cmocka_unit_test(test_calibration),
        cmocka_unit_test(test_profile_file),
        cmocka_unit_test(test_profile_file_large),
        cmocka_unit_test(test_retrieval),
        cmocka_unit_test(test_hetero_stress),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
