/* HeteroCache's head statistics in C (src/hetero.c): top-k, set overlap, stability,
 * star clustering and per-head budgets, on synthetic heads built to be stable,
 * drifting and redundant. */
#include "test_util.h"
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
    cl_kernel k;
    assert_ok(skvi_topk_kernel(ctx, &k));
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
    skv_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk),
        cmocka_unit_test(test_topk_kernel),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_categories),
        cmocka_unit_test(test_budgets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
