/* Retention scorers on the device against the C reference (src/ref/ref_score.c), for F16
 * and ADA tokens, with statistics built incrementally over many appends; hand-computed
 * cases; and a synthetic retrieval check of which scorers keep planted needles. */
#include "test_util.h"
#include "cache_internal.h"
#include "skv_ref.h"

static skv_context *ctx;
TEST_KERNEL_SUITE_SETUP(ctx)

static skv_cache *make(skv_scorer scorer, uint32_t H, uint32_t D, uint32_t P, uint32_t window)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = H, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 32u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = scorer;
    d.score_window = window;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    return c;
}

/* Appends k (fp16-exact values) [n][H][D] at positions first.. to layer 1, in pieces
 * of the given sizes. */
static void append_pieces(skv_cache *c, skv_seq_id s, const float *k, uint32_t first, uint32_t n,
                          const uint32_t *pieces, int np)
{
    const uint32_t row = c->desc.kv_heads * c->desc.head_dim;
    int32_t *pos = malloc(n * 4);
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)(first + t);
    uint32_t t0 = 0;
    for (int i = 0; t0 < n; i = (i + 1) % np) {
        uint32_t m = pieces[i] < n - t0 ? pieces[i] : n - t0;
        assert_ok(skv_append(c, s, 1, m, SKV_F32, k + (size_t)t0 * row, k + (size_t)t0 * row, pos + t0));
        t0 += m;
    }
    free(pos);
}

/* key as the cache stores it: src itself at F16 (fp16-exact inputs), else A3V4's
 * decoded code of it, which the ADA scorers score. */
static void stored_key(const skv_cache *c, const int8_t *signs, int ada, const float *src, float *key)
{
    memcpy(key, src, c->desc.head_dim * sizeof *key);
    if (ada) {
        uint32_t words[64];
        uint16_t norm;
        skv_ref_ada_encode_key(&c->ada[SKV_TIER_A3V4], signs, key, words, &norm);
        skv_ref_ada_decode_key(&c->ada[SKV_TIER_A3V4], signs, words, norm, key);
    }
}

/* Scores of head h against the reference from scratch over all n appended keys. */
static void check_scores(skv_cache *c, skv_seq_id s, uint32_t h, const float *k, uint32_t n)
{
    const uint32_t D = c->desc.head_dim, H = c->desc.kv_heads, W = c->desc.score_window;
    const skv_scorer sc = c->desc.scorer;
    const uint32_t nw = sc == SKV_SCORER_MANIFOLD_WINDOWED ? (n + W - 1) / W : 1;
    double *mean = calloc((size_t)(nw + 1) * D, sizeof *mean), *unit = calloc(D, sizeof *unit);
    uint64_t *cnt = calloc(nw + 1, sizeof *cnt);
    for (uint32_t t = 0; t < n; t++) {
        const float *kt = k + ((size_t)t * H + h) * D;
        double n2 = 0;
        for (uint32_t d = 0; d < D; d++)
            n2 += (double)kt[d] * kt[d];
        uint32_t w = nw > 1 ? t / W : 0;
        cnt[w]++;
        for (uint32_t d = 0; d < D; d++) {
            mean[(size_t)w * D + d] += kt[d];
            unit[d] += n2 > 0 ? kt[d] / sqrt(n2) : 0;
        }
    }
    float *mf = malloc((size_t)nw * D * 4), *uf = malloc(D * 4);
    for (uint32_t w = 0; w < nw; w++)
        for (uint32_t d = 0; d < D; d++)
            mf[(size_t)w * D + d] = (float)(mean[(size_t)w * D + d] / cnt[w]);
    for (uint32_t d = 0; d < D; d++)
        uf[d] = (float)(unit[d] / n);

    float *got = malloc(n * 4), *ksq = malloc((n + 1) * 4), *again = malloc(n * 4);
    int32_t *pos = malloc(n * 4);
    size_t count, pc;
    assert_ok(skv_seq_scores(c, s, 1, h, got, n, &count));
    assert_int_equal(count, n);
    /* RDR's one pass: the same scores, and |k|^2 of each key as stored, in the same order */
    for (uint32_t i = 0; i <= n; i++)
        ksq[i] = NAN;
    assert_ok(skvi_scores(c, s, 1, h, sc, again, n, &count, ksq, NULL));
    assert_memory_equal(got, again, n * 4);
    /* the same with the reads left in flight (RDR's one wait per wave) */
    int deferred = -1;
    memset(again, 0xFF, n * 4);
    assert_ok(skvi_scores(c, s, 1, h, sc, again, n, &count, ksq, &deferred));
    assert_int_equal(deferred, 1);
    assert_ok(skv_context_finish(ctx));
    assert_memory_equal(got, again, n * 4);
    assert_true(isnan(ksq[n])); /* nothing past capacity */
    assert_ok(skv_seq_positions(c, s, 1, h, pos, n, &pc));
    const skvi_page_list *f16 = skvi_seq_list(c, &c->seqs[s], 1, h, SKV_TIER_F16);
    int8_t signs[256];
    skv_ref_ada_signs(1, h, D, signs);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = (uint32_t)pos[i];
        float key[256];
        stored_key(c, signs, i >= f16->tokens, k + ((size_t)t * H + h) * D, key);
        double kk = 0;
        for (uint32_t d = 0; d < D; d++)
            kk += (double)key[d] * key[d];
        if (!(fabs(ksq[i] - kk) <= 2e-4 * fmax(1.0, kk)))
            fail_msg("|k|^2 head %u token %u: %.7g, reference %.7g", h, t, ksq[i], kk);
        const float *mu = mf + (size_t)(nw > 1 ? t / W : 0) * D;
        float want = skv_ref_score_key(sc, key, D, mu, uf, pos[i], c->desc.n_sink);
        if (!(fabsf(got[i] - want) <= 2e-4f * fmaxf(1.0f, fabsf(want))) && !(isinf(want) && got[i] == want))
            fail_msg("scorer %d head %u token %u (%s): %.7g, reference %.7g", (int)sc, h, t,
                     i >= f16->tokens ? "a3v4" : "f16", got[i], want);
    }
    free(mean), free(unit), free(cnt), free(mf), free(uf), free(got), free(pos), free(ksq), free(again);
}

static void test_scorers_match_reference(void **state)
{
    (void)state;
    const skv_scorer scorers[5] = {SKV_SCORER_KNORM, SKV_SCORER_KEYDIFF, SKV_SCORER_MANIFOLD,
                                   SKV_SCORER_MANIFOLD_WINDOWED, SKV_SCORER_STREAMING};
    const uint32_t H = 2, D = 64, P = 16, n = 333;
    test_rng r = {21};
    float *k = malloc((size_t)n * H * D * 4);
    for (size_t i = 0; i < (size_t)n * H * D; i++) /* fp16-exact, a mean and an outlier channel */
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r) + (i % D == 3 ? 5.0f : 0.4f)));
    const uint32_t pieces[4] = {1, 37, 64, 5};
    for (int si = 0; si < 5; si++) {
        skv_cache *c = make(scorers[si], H, D, P, 50);
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        append_pieces(c, s, k, 0, 200, pieces, 4);
        assert_ok(skv_seq_quantize(c, s, 16, 128, SKV_TIER_A3V4)); /* flushes the pending statistics first */
        append_pieces(c, s, k + 200 * H * D, 200, n - 200, pieces, 4); /* pending again at scoring time */
        for (uint32_t h = 0; h < H; h++)
            check_scores(c, s, h, k, n);
        /* a fork carries the statistics */
        skv_seq_id f;
        assert_ok(skv_seq_fork(c, s, &f));
        check_scores(c, f, 1, k, n);
        skv_cache_destroy(c);
    }
    free(k);
}

/* manifold_windowed keeps a row per window that holds tokens, not per window up to the
 * largest position: tokens near 0, near 10^6 and near 2^31 (in two appends, out of
 * order, some quantised) score against their own window's mean, and the statistics
 * hold as many rows as distinct windows. Before, the rows ran densely to the largest
 * position's window (2^31 / 64 windows of 1 KiB: the allocation failed). */
static void test_windowed_sparse_positions(void **state)
{
    (void)state;
    const uint32_t H = 2, D = 64, P = 16, W = 64, n = 45;
    skv_cache *c = make(SKV_SCORER_MANIFOLD_WINDOWED, H, D, P, W);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {77};
    float *k = malloc((size_t)n * H * D * 4);
    int32_t pos[45];
    for (size_t i = 0; i < (size_t)n * H * D; i++)
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r) + (i % D == 5 ? 3.0f : 0.2f)));
    for (uint32_t t = 0; t < n; t++)
        pos[t] = t % 3 == 0 ? (int32_t)(t * 5) : t % 3 == 1 ? 1000000 + 9 * (int32_t)t : INT32_MAX - 1 - (int32_t)t;
    assert_ok(skv_append(c, s, 1, 20, SKV_F32, k, k, pos));
    float got[45];
    size_t held;
    assert_ok(skv_seq_scores(c, s, 1, 0, got, n, &held)); /* the first 20 enter the statistics */
    assert_ok(skv_seq_quantize(c, s, 0, 16, SKV_TIER_A3V4));
    assert_ok(skv_append(c, s, 1, n - 20, SKV_F32, k + (size_t)20 * H * D, k + (size_t)20 * H * D, pos + 20));
    /* the reference: means by window over every key, the unit mean over all */
    uint32_t wins[45], nw = 0;
    for (uint32_t t = 0; t < n; t++) {
        uint32_t w = (uint32_t)pos[t] / W, i = 0;
        while (i < nw && wins[i] != w)
            i++;
        if (i == nw)
            wins[nw++] = w;
    }
    for (uint32_t h = 0; h < H; h++) {
        double mean[45][64] = {{0}}, unit[64] = {0};
        uint32_t cnt[45] = {0};
        for (uint32_t t = 0; t < n; t++) {
            const float *kt = k + ((size_t)t * H + h) * D;
            uint32_t i = 0;
            while (wins[i] != (uint32_t)pos[t] / W)
                i++;
            cnt[i]++;
            double n2 = 0;
            for (uint32_t d = 0; d < D; d++)
                n2 += (double)kt[d] * kt[d];
            for (uint32_t d = 0; d < D; d++) {
                mean[i][d] += kt[d];
                unit[d] += kt[d] / sqrt(n2);
            }
        }
        for (uint32_t i = 0; i < nw; i++)
            for (uint32_t d = 0; d < D; d++)
                mean[i][d] /= cnt[i];
        int32_t held_pos[45];
        size_t pc;
        for (uint32_t i = 0; i < n; i++)
            got[i] = NAN;
        assert_ok(skv_seq_scores(c, s, 1, h, got, n, &held));
        assert_int_equal(held, n);
        assert_ok(skv_seq_positions(c, s, 1, h, held_pos, n, &pc));
        assert_int_equal(c->seqs[s].stats[(size_t)1 * H + h].n_windows, nw);
        const skvi_page_list *f16 = skvi_seq_list(c, &c->seqs[s], 1, h, SKV_TIER_F16);
        int8_t signs[256];
        skv_ref_ada_signs(1, h, D, signs);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t t = 0, w = 0;
            while (pos[t] != held_pos[i])
                t++;
            while (wins[w] != (uint32_t)pos[t] / W)
                w++;
            float key[64], mu[64], uf[64];
            stored_key(c, signs, i >= f16->tokens, k + ((size_t)t * H + h) * D, key);
            for (uint32_t d = 0; d < D; d++) {
                mu[d] = (float)mean[w][d];
                uf[d] = (float)(unit[d] / n);
            }
            float want = skv_ref_score_key(SKV_SCORER_MANIFOLD_WINDOWED, key, D, mu, uf, pos[t], c->desc.n_sink);
            if (!(fabsf(got[i] - want) <= 2e-4f * fmaxf(1.0f, fabsf(want))))
                fail_msg("head %u position %d (%s): %.7g, reference %.7g", h, pos[t], i >= f16->tokens ? "a3v4" : "f16",
                         got[i], want);
        }
    }
    /* a fork carries the sparse rows */
    skv_seq_id f;
    assert_ok(skv_seq_fork(c, s, &f));
    assert_int_equal(c->seqs[f].stats[H].n_windows, nw);
    free(k);
    skv_cache_destroy(c);
}

static void test_hand_computed(void **state)
{
    (void)state;
    /* 4 keys in the first two dims: (2,0) (1,0) (0,3) (3,0): mean (1.5, 0.75), unit mean
     * (0.75, 0.25) */
    const uint32_t D = 64;
    float k[4 * 64] = {0};
    k[0] = 2, k[D] = 1, k[2 * D + 1] = 3, k[3 * D] = 3;
    const float manifold[4] = {0.9013878f, 0.9013878f, 2.7041635f, 1.6770510f}; /* |k - mean| */
    const float keydiff[4] = {-0.9486833f, -0.9486833f, -0.3162278f, -0.9486833f};
    const float knorm[4] = {-2, -1, -3, -3};
    const skv_scorer sc[3] = {SKV_SCORER_MANIFOLD, SKV_SCORER_KEYDIFF, SKV_SCORER_KNORM};
    const float *want[3] = {manifold, keydiff, knorm};
    for (int i = 0; i < 3; i++) {
        skv_cache *c = make(sc[i], 1, D, 16, 4096);
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        int32_t pos[4] = {0, 1, 2, 3};
        assert_ok(skv_append(c, s, 1, 4, SKV_F32, k, k, pos));
        float got[4];
        size_t n;
        assert_ok(skv_seq_scores(c, s, 1, 0, got, 4, &n));
        assert_int_equal(n, 4);
        for (int t = 0; t < 4; t++)
            assert_float_equal(got[t], want[i][t], 1e-5);
        skv_cache_destroy(c);
    }
    /* streaming: +inf for the sinks, then the position */
    skv_cache *c = make(SKV_SCORER_STREAMING, 1, D, 16, 4096);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    float kk[6 * 64] = {0};
    int32_t pos[6] = {0, 1, 2, 3, 4, 5};
    assert_ok(skv_append(c, s, 1, 6, SKV_F32, kk, kk, pos));
    float got[6];
    size_t n;
    assert_ok(skv_seq_scores(c, s, 1, 0, got, 6, &n));
    for (int t = 0; t < 4; t++)
        assert_true(isinf(got[t]) && got[t] > 0);
    assert_float_equal(got[4], 4.0f, 0);
    assert_float_equal(got[5], 5.0f, 0);
    /* bad input */
    assert_int_equal(skv_seq_scores(c, s, 2, 0, got, 6, &n), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_scores(c, s, 1, 1, got, 6, &n), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_scores(c, s, 1, 0, NULL, 6, &n), SKV_ERR_INVALID_ARG);
    skv_cache_destroy(c);
    skv_cache *none = make(SKV_SCORER_NONE, 1, D, 16, 4096);
    assert_ok(skv_seq_create(none, &s));
    assert_int_equal(skv_seq_scores(none, s, 1, 0, got, 6, &n), SKV_ERR_INVALID_ARG);
    skv_cache_destroy(none);
}

/* Keys around a mean with an outlier channel; needles point elsewhere with a larger norm.
 * Keeping the top 50% / 20% by score: manifold and keydiff keep every needle; knorm
 * (which keeps small norms) and streaming (which keeps the most recent) may not. Each
 * scorer's rate is printed. */
static void test_needle_retention(void **state)
{
    (void)state;
    const uint32_t H = 1, D = 128, n = 2000, needles = 10;
    test_rng r = {5};
    float *k = malloc((size_t)n * D * 4), dir[128];
    for (uint32_t d = 0; d < D; d++)
        dir[d] = test_gauss(&r);
    int is_needle[2000] = {0};
    for (uint32_t i = 0; i < needles; i++)
        is_needle[100 + i * 180] = 1;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t d = 0; d < D; d++) {
            float x = is_needle[t] ? 2.5f * dir[d] : test_gauss(&r) + 1.0f + (d == 7 ? 4.0f : 0.0f);
            k[(size_t)t * D + d] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(x));
        }
    const skv_scorer sc[4] = {SKV_SCORER_MANIFOLD, SKV_SCORER_KEYDIFF, SKV_SCORER_KNORM, SKV_SCORER_STREAMING};
    const char *names[4] = {"manifold", "keydiff", "knorm", "streaming"};
    const double keep[2] = {0.5, 0.2};
    for (int i = 0; i < 4; i++) {
        skv_cache *c = make(sc[i], H, D, 64, 4096);
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        const uint32_t pieces[1] = {256};
        append_pieces(c, s, k, 0, n, pieces, 1);
        float *score = malloc(n * 4), *sorted = malloc(n * 4);
        size_t cnt;
        assert_ok(skv_seq_scores(c, s, 1, 0, score, n, &cnt));
        memcpy(sorted, score, n * 4);
        for (uint32_t a = 1; a < n; a++) /* descending */
            for (uint32_t b = a; b > 0 && sorted[b] > sorted[b - 1]; b--) {
                float x = sorted[b];
                sorted[b] = sorted[b - 1];
                sorted[b - 1] = x;
            }
        for (int j = 0; j < 2; j++) {
            float cut = sorted[(uint32_t)(keep[j] * n) - 1];
            uint32_t kept = 0;
            for (uint32_t t = 0; t < n; t++)
                kept += is_needle[t] && score[t] >= cut;
            printf("%-8s keeping %2.0f%%: %u / %u needles kept\n", names[i], keep[j] * 100, kept, needles);
            if (sc[i] == SKV_SCORER_MANIFOLD || sc[i] == SKV_SCORER_KEYDIFF)
                assert_int_equal(kept, needles);
        }
        free(score);
        free(sorted);
        skv_cache_destroy(c);
    }
    free(k);
}

static skv_rope_desc rope_of(uint32_t d, int interleaved, float scaling)
{
    skv_rope_desc r = {10000.0f, d, (uint32_t)interleaved, scaling};
    return r;
}

static void test_rope_and_triattention_reference(void **state)
{
    (void)state;
    test_rng r = {8};
    for (int il = 0; il < 2; il++)
        for (int sc = 1; sc <= 2; sc++) {
            const uint32_t d = 128;
            skv_rope_desc rope = rope_of(d, il, (float)sc);
            float q[128], a[64], k[128], k0[128], eff[64 * 3];
            for (int n = 0; n < 50; n++) {
                for (uint32_t i = 0; i < d; i++) {
                    q[i] = test_gauss(&r);
                    k0[i] = k[i] = test_gauss(&r) * 2.0f;
                }
                for (uint32_t f = 0; f < d / 2; f++)
                    a[f] = 1.0f + (float)rng_uniform(&r);
                int32_t p = (int32_t)(rng_u32(&r) % 100000);
                int64_t t0 = p + 1 + rng_u32(&r) % 5000;
                skv_ref_rope_rotate(&rope, d, p, k); /* post-RoPE key */
                float back[128];
                memcpy(back, k, sizeof back);
                skv_ref_rope_rotate(&rope, d, -(double)p, back);
                for (uint32_t i = 0; i < d; i++) /* RoPE inversion recovers the pre-RoPE key */
                    assert_true(fabsf(back[i] - k0[i]) <= 1e-5f * fmaxf(1.0f, fabsf(k0[i])) * 10);
                double explicit_ = skv_ref_triattention_explicit(&rope, d, q, a, k, p, t0);
                skv_ref_triattention_query(&rope, d, q, a, t0, eff);
                double collapsed = skv_ref_triattention(&rope, d, eff, k);
                double mag = 0;
                for (uint32_t f = 0; f < d / 2; f++)
                    mag += fabs(eff[3 * f + 2]) * 4 + 4 * 2; /* |q||k| scale of the terms */
                if (fabs(collapsed - explicit_) > 1e-6 * mag)
                    fail_msg("layout %d scaling %d: collapsed %.6f vs explicit mean over 17 offsets %.6f", il, sc,
                             collapsed, explicit_);
            }
        }
}

/* skv_query_stats: pre-RoPE queries rotated to random positions come back as their mean
 * and mean pair magnitudes, computed directly from the pre-RoPE queries; outputs poisoned
 * first; bad input refused with the outputs untouched. */
static void test_query_stats(void **state)
{
    (void)state;
    test_rng r = {29};
    const uint32_t dims[2] = {64, 96}, QH = 3, N = 37;
    for (int il = 0; il < 2; il++)
        for (int di = 0; di < 2; di++) {
            const uint32_t d = dims[di];
            skv_rope_desc rope = rope_of(d, il, il ? 1.0f : 4.0f);
            float *pre = malloc((size_t)N * QH * d * 4), *post = malloc((size_t)N * QH * d * 4);
            float *mean = malloc((size_t)QH * d * 4), *ab = malloc((size_t)QH * d / 2 * 4);
            int32_t pos[37];
            assert_non_null(pre), assert_non_null(post), assert_non_null(mean), assert_non_null(ab);
            for (uint32_t i = 0; i < N; i++) {
                pos[i] = (int32_t)(rng_u32(&r) % 200000);
                for (uint32_t j = 0; j < QH * d; j++) /* a mean away from zero, as real queries have */
                    pre[(size_t)i * QH * d + j] = test_gauss(&r) + (float)(j % 7) - 3.0f;
                memcpy(post + (size_t)i * QH * d, pre + (size_t)i * QH * d, (size_t)QH * d * 4);
                for (uint32_t h = 0; h < QH; h++)
                    skv_ref_rope_rotate(&rope, d, pos[i], post + ((size_t)i * QH + h) * d);
            }
            for (uint32_t j = 0; j < QH * d; j++)
                mean[j] = NAN;
            for (uint32_t j = 0; j < QH * d / 2; j++)
                ab[j] = NAN;
            assert_int_equal(skv_query_stats(&rope, QH, d, N, post, pos, mean, ab), SKV_OK);
            for (uint32_t h = 0; h < QH; h++) {
                for (uint32_t j = 0; j < d; j++) {
                    double want = 0;
                    for (uint32_t i = 0; i < N; i++)
                        want += pre[((size_t)i * QH + h) * d + j] / (double)N;
                    if (!(fabs(mean[h * d + j] - want) <= 1e-4 * (1 + fabs(want))))
                        fail_msg("layout %d d %u head %u dim %u: mean %g, want %g", il, d, h, j, mean[h * d + j], want);
                }
                for (uint32_t f = 0; f < d / 2; f++) {
                    uint32_t i0, i1;
                    skv_ref_rope_pair(&rope, d, f, &i0, &i1);
                    double want = 0;
                    for (uint32_t i = 0; i < N; i++)
                        want += hypot(pre[((size_t)i * QH + h) * d + i0], pre[((size_t)i * QH + h) * d + i1]) / N;
                    if (!(fabs(ab[h * d / 2 + f] - want) <= 1e-4 * (1 + want)))
                        fail_msg("layout %d d %u head %u pair %u: |q_f| %g, want %g", il, d, h, f, ab[h * d / 2 + f],
                                 want);
                }
            }
            /* refused, outputs untouched */
            const float keep0 = mean[0], keep1 = ab[0];
            int32_t bad_pos = pos[5];
            pos[5] = -1;
            assert_int_equal(skv_query_stats(&rope, QH, d, N, post, pos, mean, ab), SKV_ERR_INVALID_ARG);
            pos[5] = bad_pos;
            post[11] = NAN;
            assert_int_equal(skv_query_stats(&rope, QH, d, N, post, pos, mean, ab), SKV_ERR_INVALID_ARG);
            assert_non_null(strstr(skv_last_error(), "not finite"));
            post[11] = 0;
            skv_rope_desc part = rope;
            part.rotary_dims = d / 2;
            assert_int_equal(skv_query_stats(&part, QH, d, N, post, pos, mean, ab), SKV_ERR_INVALID_ARG);
            assert_int_equal(skv_query_stats(&rope, QH, d, 0, post, pos, mean, ab), SKV_ERR_INVALID_ARG);
            assert_int_equal(skv_query_stats(&rope, QH, d, N, NULL, pos, mean, ab), SKV_ERR_INVALID_ARG);
            assert_int_equal(skv_query_stats(&rope, QH, d + 1, N, post, pos, mean, ab), SKV_ERR_INVALID_ARG);
            assert_true(mean[0] == keep0 && ab[0] == keep1);
            free(pre), free(post), free(mean), free(ab);
        }
}

static void test_triattention_kernel(void **state)
{
    (void)state;
    const uint32_t H = 2, G = 2, D = 64, P = 16, n = 300, L = 2;
    test_rng r = {9};
    float *qm = malloc((size_t)L * H * G * D * 4), *qa = malloc((size_t)L * H * G * D / 2 * 4);
    for (size_t i = 0; i < (size_t)L * H * G * D; i++)
        qm[i] = test_gauss(&r);
    for (size_t i = 0; i < (size_t)L * H * G * D / 2; i++)
        qa[i] = 1.5f + (float)rng_uniform(&r);
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = H * G, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 16u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = SKV_SCORER_TRIATTENTION;
    /* its inputs are checked at creation */
    skv_cache *c = NULL;
    assert_int_equal(skv_cache_create(ctx, &d, &c), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "rope"));
    d.rope = rope_of(D, 1, 1.0f);
    assert_int_equal(skv_cache_create(ctx, &d, &c), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "query statistics"));
    d.query_mean = qm, d.query_abs = qa;
    d.rope.rotary_dims = D / 2;
    assert_int_equal(skv_cache_create(ctx, &d, &c), SKV_ERR_UNSUPPORTED);
    d.rope.rotary_dims = D;
    assert_ok(skv_cache_create(ctx, &d, &c));

    float *k = malloc((size_t)n * H * D * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t t = 0; t < n; t++) {
        pos[t] = (int32_t)(3 * t + 7);
        for (uint32_t h = 0; h < H; h++) {
            float *kt = k + ((size_t)t * H + h) * D;
            for (uint32_t i = 0; i < D; i++)
                kt[i] = test_gauss(&r) * 1.5f + 0.5f;
            skv_ref_rope_rotate(&d.rope, D, pos[t], kt);
            for (uint32_t i = 0; i < D; i++)
                kt[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(kt[i]));
        }
    }
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_append(c, s, 1, n, SKV_F32, k, k, pos));
    assert_ok(skv_seq_quantize(c, s, 32, 160, SKV_TIER_A3V4));
    const int64_t t0 = 3 * (n - 1) + 7 + 1;
    for (uint32_t h = 0; h < H; h++) {
        float got[300];
        int32_t order[300];
        size_t cnt, pc;
        assert_ok(skv_seq_scores(c, s, 1, h, got, n, &cnt));
        assert_ok(skv_seq_positions(c, s, 1, h, order, n, &pc));
        const skvi_page_list *f16 = skvi_seq_list(c, &c->seqs[s], 1, h, SKV_TIER_F16);
        int8_t signs[256];
        skv_ref_ada_signs(1, h, D, signs);
        double raw[2][300], want[300];
        for (uint32_t i = 0; i < n; i++) {
            uint32_t t = ((uint32_t)order[i] - 7) / 3;
            float key[64];
            memcpy(key, k + ((size_t)t * H + h) * D, sizeof key);
            if (i >= f16->tokens) {
                uint32_t words[64];
                uint16_t norm;
                skv_ref_ada_encode_key(&c->ada[SKV_TIER_A3V4], signs, key, words, &norm);
                skv_ref_ada_decode_key(&c->ada[SKV_TIER_A3V4], signs, words, norm, key);
            }
            for (uint32_t g = 0; g < G; g++) {
                size_t row = (size_t)1 * H * G + h * G + g;
                float eff[32 * 3];
                skv_ref_triattention_query(&d.rope, D, qm + row * D, qa + row * D / 2, t0, eff);
                raw[g][i] = skv_ref_triattention(&d.rope, D, eff, key);
            }
        }
        for (uint32_t i = 0; i < n; i++)
            want[i] = -INFINITY;
        for (uint32_t g = 0; g < G; g++) {
            double mean = 0, var = 0;
            for (uint32_t i = 0; i < n; i++)
                mean += raw[g][i] / n;
            for (uint32_t i = 0; i < n; i++)
                var += (raw[g][i] - mean) * (raw[g][i] - mean) / n;
            for (uint32_t i = 0; i < n; i++)
                want[i] = fmax(want[i], (raw[g][i] - mean) / sqrt(var));
        }
        for (uint32_t i = 0; i < n; i++)
            if (fabs(got[i] - want[i]) > 2e-3)
                fail_msg("head %u token %u: %.5f, reference %.5f", h, i, got[i], want[i]);
    }
    free(k), free(pos), free(qm), free(qa);
    skv_cache_destroy(c);
}

/* SnapKV's pooling is kvpress's: over the tokens before the window only, so the
 * window's own (large) votes reach none of its neighbours; held tokens in position order
 * (an evicted token leaves no gap), zero padding at both ends. */
static void test_snapkv_pooling(void **state)
{
    (void)state;
    /* positions shuffled; 13 is evicted; the window starts at 20 */
    const int32_t kpos[9] = {21, 11, 12, 20, 10, 15, 14, 22, 16};
    const float votes[9] = {100, 1, 2, 100, 3, 4, 5, 100, 6};
    float out[9];
    for (int i = 0; i < 9; i++)
        out[i] = NAN;
    assert_int_equal(skv_ref_snapkv_pool(votes, kpos, 9, 20, out), 0);
    /* in position order 10 11 12 14 15 16 | 20 21 22 the votes are 3 1 2 5 4 6 | window */
    const float want[9] = {INFINITY, (3 + 1 + 2 + 5) / 5.0f, (3 + 1 + 2 + 5 + 4) / 5.0f, INFINITY, (3 + 1 + 2) / 5.0f,
                           (2 + 5 + 4 + 6) / 5.0f, (1 + 2 + 5 + 4 + 6) / 5.0f, INFINITY, (5 + 4 + 6) / 5.0f};
    for (int i = 0; i < 9; i++)
        if (!(out[i] == want[i] || fabsf(out[i] - want[i]) <= 1e-6f))
            fail_msg("token at %d: %g, want %g", kpos[i], out[i], want[i]);
}

static void test_snapkv(void **state)
{
    (void)state;
    const uint32_t H = 2, G = 2, D = 64, n = 300, w = 16;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = H * G, d.kv_heads = H, d.head_dim = D, d.page_tokens = 16;
    d.device_budget_bytes = 16u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = SKV_SCORER_SNAPKV;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {17};
    float *k = malloc((size_t)n * H * D * 4), *q = malloc((size_t)w * H * G * D * 4);
    int32_t pos[300], qpos[16];
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    for (size_t i = 0; i < (size_t)n * H * D; i++)
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r)));
    for (size_t i = 0; i < (size_t)w * H * G * D; i++)
        q[i] = test_gauss(&r) * 1.5f;
    for (uint32_t i = 0; i < w; i++)
        qpos[i] = (int32_t)(n - w + i);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_append(c, s, 1, n, SKV_F32, k, k, pos));
    assert_ok(skv_seq_quantize(c, s, 32, 160, SKV_TIER_A3V4));
    float got[300];
    size_t cnt;
    assert_int_equal(skv_seq_scores(c, s, 1, 0, got, n, &cnt), SKV_ERR_INVALID_ARG); /* no window yet */
    assert_non_null(strstr(skv_last_error(), "observation window"));
    assert_int_equal(skv_seq_observe_window(c, s, 1, 0, SKV_F32, q, qpos), SKV_ERR_INVALID_ARG);
    assert_ok(skv_seq_observe_window(c, s, 1, w, SKV_F32, q, qpos));
    for (uint32_t h = 0; h < H; h++) {
        int32_t order[300];
        size_t pc;
        assert_ok(skv_seq_scores(c, s, 1, h, got, n, &cnt));
        assert_ok(skv_seq_positions(c, s, 1, h, order, n, &pc));
        const skvi_page_list *f16 = skvi_seq_list(c, &c->seqs[s], 1, h, SKV_TIER_F16);
        int8_t signs[256];
        skv_ref_ada_signs(1, h, D, signs);
        float *keys = malloc((size_t)n * D * 4), qh[16 * 2 * 64], want[300];
        for (uint32_t i = 0; i < n; i++) {
            memcpy(keys + (size_t)i * D, k + ((size_t)order[i] * H + h) * D, D * 4);
            if (i >= f16->tokens) {
                uint32_t words[64];
                uint16_t norm;
                skv_ref_ada_encode_key(&c->ada[SKV_TIER_A3V4], signs, keys + (size_t)i * D, words, &norm);
                skv_ref_ada_decode_key(&c->ada[SKV_TIER_A3V4], signs, words, norm, keys + (size_t)i * D);
            }
        }
        for (uint32_t i = 0; i < w; i++)
            for (uint32_t g = 0; g < G; g++)
                memcpy(qh + ((size_t)i * G + g) * D, q + ((size_t)i * H * G + h * G + g) * D, D * 4);
        assert_int_equal(skv_ref_snapkv(qh, qpos, w, G, keys, order, n, D, want), 0);
        uint32_t inf = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (isinf(want[i])) {
                assert_true(isinf(got[i]));
                inf++;
                continue;
            }
            if (!(fabsf(got[i] - want[i]) <= 1e-4f * want[i] + 1e-7f))
                fail_msg("head %u token %u: %.7g, reference %.7g", h, i, got[i], want[i]);
        }
        assert_int_equal(inf, w); /* the window's own tokens are kept */
        free(keys);
    }
    free(k), free(q);
    skv_cache_destroy(c);
}

/* H2O: decode accumulates every token's attention probability (mean over the group); the
 * score is that sum / the decode steps that observed the token (kvpress's normalisation):
 * the 200 prefill tokens, all observed by the 5 steps, score their mean attention, with
 * no penalty by age. Both decode kernel variants, F16 and A3V4 tokens, against fp64
 * probabilities over the stored keys. */
/* The observed scorer's accumulators are per position: a position far ahead of the
 * tokens is refused before anything changes (it asked for 8 GiB before), one within the
 * span is taken. */
static void test_observed_position_span(void **state)
{
    (void)state;
    skv_cache *c = make(SKV_SCORER_OBSERVED, 2, 64, 16, 64);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    float k[2 * 2 * 64] = {0};
    int32_t far[2] = {0, INT32_MAX - 1}, edge[2] = {1, 65535}, past[1] = {65536};
    assert_int_equal(skv_append(c, s, 0, 2, SKV_F32, k, k, far), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "per-position"));
    uint64_t len;
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 0);
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    assert_int_equal(st.pools[SKV_TIER_F16][SKV_MEM_DEVICE].pages_used, 0);
    assert_ok(skv_append(c, s, 0, 2, SKV_F32, k, k, edge));
    assert_int_equal(skv_append(c, s, 0, 1, SKV_F32, k, k, past), SKV_ERR_UNSUPPORTED);
    assert_ok(skv_seq_length(c, s, 0, &len));
    assert_int_equal(len, 2);
    skv_cache_destroy(c);
}

static void test_observed(void **state)
{
    (void)state;
    const uint32_t H = 2, G = 2, D = 64, n0 = 200, steps = 5;
    for (int variant = 0; variant < TEST_VARIANTS; variant++) {
        skv_cache_desc d;
        skv_cache_desc_init(&d);
        d.layers = 1, d.q_heads = H * G, d.kv_heads = H, d.head_dim = D, d.page_tokens = 16;
        d.device_budget_bytes = 16u << 20;
        d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
        d.scorer = SKV_SCORER_OBSERVED;
        skv_cache *c;
        assert_ok(skv_cache_create(ctx, &d, &c));
        assert_ok(skv_cache_set_decode_params(c, &test_variants[variant]));
        const uint32_t n = n0 + steps;
        test_rng r = {31 + variant};
        float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
        int32_t pos[205];
        for (uint32_t t = 0; t < n; t++)
            pos[t] = (int32_t)t;
        for (size_t i = 0; i < (size_t)n * H * D; i++) {
            k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r) * 1.5f));
            v[i] = test_gauss(&r);
        }
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        assert_ok(skv_append(c, s, 0, n0, SKV_F32, k, v, pos));
        assert_ok(skv_seq_quantize(c, s, 32, 96, SKV_TIER_A3V4));
        /* the keys decode sees: A3V4 tokens decoded */
        float *kd = malloc((size_t)n * H * D * 4);
        memcpy(kd, k, (size_t)n * H * D * 4);
        for (uint32_t t = 32; t < 96; t++)
            for (uint32_t h = 0; h < H; h++) {
                int8_t signs[256];
                skv_ref_ada_signs(0, h, D, signs);
                uint32_t words[64];
                uint16_t norm;
                float *kt = kd + ((size_t)t * H + h) * D;
                skv_ref_ada_encode_key(&c->ada[SKV_TIER_A3V4], signs, kt, words, &norm);
                skv_ref_ada_decode_key(&c->ada[SKV_TIER_A3V4], signs, words, norm, kt);
            }
        double acc[2][205] = {{0}};
        const float scale = 0.125f;
        for (uint32_t st = 0; st < steps; st++) {
            uint32_t len = n0 + st + 1;
            assert_ok(skv_append(c, s, 0, 1, SKV_F32, k + (size_t)(len - 1) * H * D, v + (size_t)(len - 1) * H * D,
                                 pos + len - 1));
            float q[4 * 64], out[4 * 64];
            for (uint32_t i = 0; i < H * G * D; i++)
                q[i] = test_gauss(&r);
            assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, scale, SKV_F32, out));
            /* skv_attention_logits on an observed cache: the same logits, and no accumulation
             * (the scores below would count this call as a sixth step) */
            static float kept[4 * 205];
            size_t counts[2];
            assert_ok(skv_attention_logits(c, 0, s, SKV_F32, q, scale, kept, 205, counts));
            for (uint32_t qh = 0; qh < H * G; qh++) {
                uint32_t h = qh / G;
                double m = -INFINITY, l = 0, *lg = malloc(len * sizeof *lg);
                for (uint32_t t = 0; t < len; t++) {
                    double x = 0;
                    for (uint32_t j = 0; j < D; j++)
                        x += (double)q[qh * D + j] * kd[((size_t)t * H + h) * D + j];
                    lg[t] = x * scale;
                    m = lg[t] > m ? lg[t] : m;
                }
                int32_t order[205];
                size_t pc;
                assert_int_equal(counts[h], len);
                assert_ok(skv_seq_positions(c, s, 0, h, order, len, &pc));
                for (uint32_t i = 0; i < len; i++)
                    if (!(fabs(kept[qh * 205 + i] - lg[order[i]]) <= 1e-5 * fmax(1.0, fabs(lg[order[i]]))))
                        fail_msg("logit of q-head %u position %d: %.7g, reference %.7g", qh, order[i],
                                 kept[qh * 205 + i], lg[order[i]]);
                for (uint32_t t = 0; t < len; t++)
                    l += exp(lg[t] - m);
                for (uint32_t t = 0; t < len; t++)
                    acc[h][t] += exp(lg[t] - m) / l / G;
                free(lg);
            }
        }
        for (uint32_t h = 0; h < H; h++) {
            float got[205];
            int32_t order[205];
            size_t cnt, pc;
            assert_ok(skv_seq_scores(c, s, 0, h, got, n, &cnt));
            assert_int_equal(cnt, n);
            assert_ok(skv_seq_positions(c, s, 0, h, order, n, &pc));
            for (uint32_t i = 0; i < n; i++) {
                int32_t p = order[i];
                const uint32_t seen = (uint32_t)p < n0 ? steps : n - (uint32_t)p; /* step st appends n0 + st */
                double want = acc[h][p] / (double)seen;
                if (fabs(got[i] - want) > 1e-4 * want + 1e-7)
                    fail_msg("%s kernel head %u position %d: %.7g, reference %.7g", test_variant_name(variant), h, p,
                             got[i], want);
            }
        }
        free(k), free(v), free(kd);
        skv_cache_destroy(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scorers_match_reference),
        cmocka_unit_test(test_windowed_sparse_positions),
        cmocka_unit_test(test_hand_computed),
        cmocka_unit_test(test_needle_retention),
        cmocka_unit_test(test_rope_and_triattention_reference),
        cmocka_unit_test(test_triattention_kernel),
        cmocka_unit_test(test_query_stats),
        cmocka_unit_test(test_snapkv_pooling),
        cmocka_unit_test(test_snapkv),
        cmocka_unit_test(test_observed),
        cmocka_unit_test(test_observed_position_span),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
