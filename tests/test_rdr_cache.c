/* RDR in the cache: the budget holds after packing, {F16, drop} keeps exactly the top
 * tokens by score, compression runs on append, it is all or nothing under allocation
 * failure, and compressing 20K tokens to 1/8 keeps planted needles retrievable. */
#include "test_util.h"
#include "cache_internal.h"
#include "skv_ref.h"

/* test_kept_scores' bounds, from its measured spread (SKV_TEST_SEEDS=6: 6 seeds x 4
 * compressions x 2 heads): a kept score differs from a fresh scoring by at most 0.227 of
 * the largest |score| (tokens moved to an ADA tier keep their F16 key's score), and the
 * tokens kept overlap a full scoring's by at least 0.9675 */
#define KEPT_SCORE_DRIFT 0.35
#define KEPT_SET_OVERLAP 0.93

static skv_context *ctx;
static counting_allocator counter;

TEST_COUNTING_SUITE_SETUP(ctx, counter)

static skv_cache_desc make_desc(uint32_t tiers, float ratio, uint32_t layers, uint32_t H, uint32_t D, uint32_t P)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = layers, d.q_heads = 2 * H, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 64u << 20;
    d.tiers = tiers;
    d.scorer = SKV_SCORER_KEYDIFF;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = ratio;
    d.recent_window = 32;
    d.slack = 1u << 30; /* explicit skv_compress only, unless a test says otherwise */
    return d;
}

static skv_cache *make(uint32_t tiers, float ratio, uint32_t layers, uint32_t H, uint32_t D, uint32_t P)
{
    skv_cache_desc d = make_desc(tiers, ratio, layers, H, D, P);
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    return c;
}

static void fill(skv_cache *c, skv_seq_id s, uint32_t n, test_rng *r, float *keep_k, float *keep_v)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim;
    float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        for (size_t i = 0; i < (size_t)n * H * D; i++) {
            k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(r) + (i % D == 1 ? 3.0f : 0.5f)));
            v[i] = test_gauss(r);
        }
        assert_ok(skv_append(c, s, l, n, SKV_F32, k, v, pos));
        if (keep_k && l == 0) {
            memcpy(keep_k, k, (size_t)n * H * D * 4);
            memcpy(keep_v, v, (size_t)n * H * D * 4);
        }
    }
    free(k), free(v), free(pos);
}

static uint64_t list_bytes(skv_cache *c, skv_seq_id s, uint32_t l, uint32_t h)
{
    uint64_t b = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        uint64_t pb;
        assert_ok(skv_cache_page_bytes(c, (skv_tier)t, &pb));
        b += skvi_seq_list(c, &c->seqs[s], l, h, (skv_tier)t)->n * pb;
    }
    return b;
}

static void test_budget_holds(void **state)
{
    (void)state;
    const uint32_t tiers[3] = {0x1, 0xB, 0xF};
    const float ratios[3] = {0.5f, 0.25f, 0.125f};
    const uint32_t Ps[2] = {16, 32}, Ds[2] = {64, 128};
    test_rng r = {1};
    for (int ti = 0; ti < 3; ti++)
        for (int ri = 0; ri < 3; ri++) {
            uint32_t P = Ps[(ti + ri) % 2], D = Ds[ri % 2], n = 700;
            skv_cache *c = make(tiers[ti], ratios[ri], 2, 2, D, P);
            skv_seq_id s;
            assert_ok(skv_seq_create(c, &s));
            fill(c, s, n, &r, NULL, NULL);
            assert_ok(skv_compress(c, s));
            uint64_t f16_page;
            assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &f16_page));
            for (uint32_t l = 0; l < 2; l++)
                for (uint32_t h = 0; h < 2; h++) {
                    uint64_t budget = (uint64_t)((uint64_t)(ratios[ri] * n) * ((double)f16_page / P));
                    uint64_t used = list_bytes(c, s, l, h);
                    if (used > budget)
                        fail_msg("tiers 0x%x ratio %.3f P %u D %u: layer %u head %u uses %llu > %llu bytes", tiers[ti],
                                 ratios[ri], P, D, l, h, (unsigned long long)used, (unsigned long long)budget);
                }
            /* what is kept still decodes */
            float q[4 * 128], o[4 * 128];
            for (uint32_t i = 0; i < 4 * D; i++)
                q[i] = test_gauss(&r);
            assert_ok(skv_attention_decode(c, 1, &s, 1, SKV_F32, q, 0.1f, SKV_F32, o));
            skv_cache_destroy(c);
        }
}

/* An absolute byte cap per sequence: the pages of all layers and heads fit it (and use
 * most of it); with a ratio that is tighter, the ratio decides. */
static void test_absolute_budget(void **state)
{
    (void)state;
    const uint32_t L = 2, H = 2, D = 64, P = 16, n = 700;
    test_rng r = {12};
    for (int tighter_ratio = 0; tighter_ratio < 2; tighter_ratio++) {
        skv_cache_desc d = make_desc(0xF, tighter_ratio ? 0.1f : 1.0f, L, H, D, P);
        skv_cache *c = make(0xF, 1.0f, L, H, D, P); /* for the page size */
        uint64_t f16_page;
        assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &f16_page));
        skv_cache_destroy(c);
        const double f16_all = (double)n / P * (double)f16_page * L * H; /* every token at F16 */
        d.budget_bytes = (uint64_t)(0.2 * f16_all);
        assert_ok(skv_cache_create(ctx, &d, &c));
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        fill(c, s, n, &r, NULL, NULL);
        assert_ok(skv_compress(c, s));
        uint64_t used = 0;
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t h = 0; h < H; h++)
                used += list_bytes(c, s, l, h);
        const double cap = tighter_ratio ? 0.1 * f16_all : (double)d.budget_bytes;
        printf("budget_bytes %llu, ratio %.2f: %llu bytes used (%.3f of the binding budget)\n",
               (unsigned long long)d.budget_bytes, d.budget_ratio, (unsigned long long)used, (double)used / cap);
        assert_true((double)used <= cap);
        assert_true((double)used >= 0.8 * cap);
        skv_cache_destroy(c);
    }
}

static void test_topk_f16_drop(void **state)
{
    (void)state;
    /* With tiers {F16, drop} RDR keeps the sinks, the recent window and, in the rest of
     * the whole pages the budget holds, exactly the top tokens by score. */
    const uint32_t P = 16, D = 64, n = 500, H = 2;
    skv_cache *c = make(0x1, 0.4f, 1, H, D, P);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {2};
    fill(c, s, n, &r, NULL, NULL);
    uint64_t pb;
    assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
    const uint64_t budget = (uint64_t)((uint64_t)(0.4f * n) * ((double)pb / P));
    const uint32_t keep = (uint32_t)(budget / pb * P), prot = 4 + 32;
    int expect[2][500] = {{0}};
    for (uint32_t h = 0; h < H; h++) {
        float score[500];
        size_t cnt;
        assert_ok(skv_seq_scores(c, s, 0, h, score, n, &cnt)); /* cache order = position order here */
        for (uint32_t t = 0; t < n; t++)
            expect[h][t] = t < 4 || t >= n - 32;
        for (uint32_t k = 0; k < keep - prot; k++) {
            int best = -1;
            for (uint32_t t = 0; t < n; t++)
                if (!expect[h][t] && (best < 0 || score[t] > score[best]))
                    best = (int)t;
            expect[h][best] = 1;
        }
    }
    assert_ok(skv_compress(c, s));
    for (uint32_t h = 0; h < H; h++) {
        int32_t pos[500];
        size_t cnt;
        assert_ok(skv_seq_positions(c, s, 0, h, pos, n, &cnt));
        assert_int_equal(cnt, keep);
        int got[500] = {0};
        for (size_t i = 0; i < cnt; i++) {
            if (i)
                assert_true(pos[i] > pos[i - 1]); /* F16 order kept */
            got[pos[i]] = 1;
        }
        assert_memory_equal(got, expect[h], sizeof got);
    }
    skv_cache_destroy(c);
}

/* Compression runs on append once slack tokens have come. */
static void test_runs_on_append(void **state)
{
    (void)state;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = 2, d.kv_heads = 1, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 16u << 20;
    d.tiers = 0xF;
    d.scorer = SKV_SCORER_MANIFOLD;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = 0.25f;
    d.recent_window = 32;
    d.slack = 64;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {3};
    uint64_t pb, before = 0;
    assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
    for (int step = 0; step < 80; step++) { /* 80 x 10 tokens */
        float k[10 * 64], v[10 * 64];
        int32_t pos[10];
        for (int i = 0; i < 10 * 64; i++)
            k[i] = test_gauss(&r), v[i] = test_gauss(&r);
        for (int i = 0; i < 10; i++)
            pos[i] = step * 10 + i;
        assert_ok(skv_append(c, s, 0, 10, SKV_F32, k, v, pos));
        uint64_t b = list_bytes(c, s, 0, 0);
        if (step == 5) /* 60 < 64 tokens: nothing yet, all F16 */
            assert_int_equal(b, (uint64_t)(60 + 15) / 16 * pb);
        before = b;
    }
    /* 800 tokens appended: compressed on the way (F16 alone would be 50 pages) */
    assert_true(before < 50 * pb);
    assert_true(skvi_seq_list(c, &c->seqs[s], 0, 0, SKV_TIER_F16)->tokens < 800);
    /* Each compression budgets against every token appended, not the ones a previous
     * compression kept: the cache stays near the ratio instead of shrinking at each step. */
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    printf("after 800 tokens with compression on append: bytes ratio %.3f (budget 0.25)\n", st.bytes_ratio);
    assert_true(st.bytes_ratio <= 0.25 + 1e-9);
    assert_true(st.bytes_ratio >= 0.2);
    skv_cache_destroy(c);
}

/* The budget is a ceiling: after every append, host or interop, in pieces of 1 to 9
 * tokens, each (layer, kv-head) holds at most budget_ratio of the F16 bytes of the
 * tokens appended to it, once the sequence is long enough for the floor (the sinks'
 * page, the recent window and the room for slack tokens) to fit the budget. */
static void test_budget_is_ceiling(void **state)
{
    (void)state;
    const float ratios[2] = {0.25f, 0.125f};
    for (int mode = 0; mode < 2; mode++)
        for (int b = 0; b < 2; b++) {
            skv_cache_desc d = make_desc(0xF, ratios[b], 2, 2, 64, 16);
            d.slack = 32;
            skv_cache *c;
            assert_ok(skv_cache_create(ctx, &d, &c));
            skv_seq_id s;
            assert_ok(skv_seq_create(c, &s));
            cl_context clc;
            assert_ok(skv_context_cl_objects(ctx, &clc, NULL, NULL, NULL));
            const uint32_t H = 2, D = 64, n = 1400, from = (uint32_t)(160 / ratios[b]);
            test_rng r = {71 + (uint64_t)b};
            float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
            for (size_t i = 0; i < (size_t)n * H * D; i++)
                k[i] = test_gauss(&r) + (i % D == 3 ? 2.0f : 0.3f), v[i] = test_gauss(&r);
            cl_int e;
            cl_mem kb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)n * H * D * 4, k, &e);
            assert_int_equal(e, CL_SUCCESS);
            cl_mem vb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)n * H * D * 4, v, &e);
            assert_int_equal(e, CL_SUCCESS);
            uint64_t pb;
            assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
            const double f16_token = (double)pb / 16;
            double worst = 0;
            for (uint32_t len = 0; len < n;) {
                uint32_t m = 1 + rng_u32(&r) % 9;
                m = m > n - len ? n - len : m;
                int32_t pos[9];
                for (uint32_t i = 0; i < m; i++)
                    pos[i] = (int32_t)(len + i);
                const size_t off = (size_t)len * H * D;
                for (uint32_t l = 0; l < 2; l++) {
                    if (mode == 0)
                        assert_ok(skv_append(c, s, l, m, SKV_F32, k + off, v + off, pos));
                    else
                        assert_ok(skv_append_cl(c, s, l, m, SKV_F32, kb, off * 4, vb, off * 4, pos, 0, NULL, NULL));
                }
                len += m;
                for (uint32_t l = 0; len >= from && l < 2; l++)
                    for (uint32_t h = 0; h < H; h++) {
                        const double ratio = (double)list_bytes(c, s, l, h) / (len * f16_token);
                        worst = ratio > worst ? ratio : worst;
                    }
            }
            printf("%s appends, budget %.3f: at most %.4f of F16 from %u tokens on\n", mode ? "interop" : "host",
                   (double)ratios[b], worst, from);
            assert_true(worst <= ratios[b] + 1e-9);
            assert_true(worst >= 0.8 * ratios[b]); /* and the budget is used */
            assert_ok(skv_context_finish(ctx));
            clReleaseMemObject(kb);
            clReleaseMemObject(vb);
            free(k), free(v);
            skv_cache_destroy(c);
        }
}

/* An allocation failure at any step of skv_compress leaves the sequence as it was. */
static void test_all_or_nothing(void **state)
{
    (void)state;
    skv_cache *c = make(0xF, 0.25f, 1, 2, 64, 16);
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {4};
    fill(c, s, 300, &r, NULL, NULL);
    float q[4 * 64];
    for (int i = 0; i < 4 * 64; i++)
        q[i] = test_gauss(&r);
    float before[4 * 64], after[4 * 64];
    assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.1f, SKV_F32, before));
    uint64_t bytes0 = list_bytes(c, s, 0, 0) + list_bytes(c, s, 0, 1);
    int failures = 0;
    for (long k = 1;; k++) {
        counter.calls = 0;
        counter.fail_at = k;
        skv_status st = skv_compress(c, s);
        counter.fail_at = 0;
        if (st == SKV_OK)
            break;
        assert_int_equal(st, SKV_ERR_OUT_OF_MEMORY);
        failures++;
        assert_int_equal(list_bytes(c, s, 0, 0) + list_bytes(c, s, 0, 1), bytes0);
        assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.1f, SKV_F32, after));
        assert_memory_equal(before, after, sizeof before);
    }
    printf("skv_compress: %d injected failures, then success\n", failures);
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    uint64_t held = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        held += st.tokens[t];
    printf("after RDR at 1/4: tokens f16 %llu a4v8 %llu a3v4 %llu a2v2 %llu, bytes ratio %.3f\n",
           (unsigned long long)st.tokens[0], (unsigned long long)st.tokens[1], (unsigned long long)st.tokens[2],
           (unsigned long long)st.tokens[3], st.bytes_ratio);
    assert_true(held <= 2 * 300);
    assert_true(st.bytes_ratio <= 0.25 + 1e-9); /* the budget, against every token at F16 */
    assert_true(failures > 5);
    assert_true(list_bytes(c, s, 0, 0) + list_bytes(c, s, 0, 1) < bytes0);
    skv_cache_destroy(c);
}

/* 20K tokens with planted needles, compressed to 1/8 of F16 with RDR + keydiff: the
 * needles are kept and a query aimed at one still returns its value. */
static void test_needles_at_one_eighth(void **state)
{
    (void)state;
    const uint32_t H = 2, G = 2, D = 64, n = 20000, needles = 8;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = H * G, d.kv_heads = H, d.head_dim = D, d.page_tokens = 64;
    d.device_budget_bytes = 128u << 20;
    d.tiers = 0xF;
    d.scorer = SKV_SCORER_KEYDIFF;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = 0.125f;
    d.slack = 1u << 30;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    test_rng r = {5};
    float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4), dir[2][64], val[2][64];
    int32_t *pos = malloc(n * 4);
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t i = 0; i < D; i++)
            dir[h][i] = test_gauss(&r), val[h][i] = 3.0f * test_gauss(&r);
    int is_needle[20000] = {0};
    for (uint32_t i = 0; i < needles; i++)
        is_needle[1000 + i * 2300] = 1;
    for (uint32_t t = 0; t < n; t++) {
        pos[t] = (int32_t)t;
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t i = 0; i < D; i++) {
                size_t o = ((size_t)t * H + h) * D + i;
                k[o] = is_needle[t] ? 2.0f * dir[h][i] : test_gauss(&r) + (i == 5 ? 4.0f : 0.6f);
                v[o] = is_needle[t] ? val[h][i] : test_gauss(&r);
            }
    }
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    assert_ok(skv_append(c, s, 0, n, SKV_F32, k, v, pos));
    assert_ok(skv_compress(c, s));
    uint64_t pb;
    assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
    for (uint32_t h = 0; h < H; h++) {
        assert_true(list_bytes(c, s, 0, h) <= (uint64_t)(n / 8 * ((double)pb / 64)));
        int32_t *held = malloc(n * 4);
        size_t cnt;
        assert_ok(skv_seq_positions(c, s, 0, h, held, n, &cnt));
        uint32_t found = 0;
        for (size_t i = 0; i < cnt; i++)
            found += is_needle[held[i]];
        printf("head %u: %zu of %u tokens held, %u / %u needles kept\n", h, cnt, n, found, needles);
        assert_int_equal(found, needles);
        free(held);
    }
    /* a query aimed at the needles: the output is their value (cosine > 0.9 per head) */
    float q[4 * 64], out[4 * 64];
    for (uint32_t qh = 0; qh < H * G; qh++)
        for (uint32_t i = 0; i < D; i++)
            q[qh * D + i] = 4.0f * dir[qh / G][i];
    assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 1.0f / 8, SKV_F32, out));
    for (uint32_t qh = 0; qh < H * G; qh++) {
        double dot = 0, no = 0, nv = 0;
        for (uint32_t i = 0; i < D; i++) {
            dot += (double)out[qh * D + i] * val[qh / G][i];
            no += (double)out[qh * D + i] * out[qh * D + i];
            nv += (double)val[qh / G][i] * val[qh / G][i];
        }
        printf("q-head %u: cos(out, needle value) = %.3f\n", qh, dot / sqrt(no * nv));
        assert_true(dot / sqrt(no * nv) > 0.9);
    }
    free(k), free(v), free(pos);
    skv_cache_destroy(c);
}

/* AdaKV spreads each layer's budget over its heads; every layer's total holds. */
static void test_budget_rules(void **state)
{
    (void)state;
    skv_cache_desc d = make_desc(0xF, 0.25f, 3, 2, 64, 16);
    d.budget_rule = SKV_BUDGET_ADAKV;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {6};
    const uint32_t n = 800;
    fill(c, s, n, &r, NULL, NULL);
    assert_ok(skv_compress(c, s));
    uint64_t pb;
    assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
    const uint64_t floor_bytes = 2 * (uint64_t)((4 + 15) / 16 + (32 + 15) / 16) * pb; /* sinks + window, 2 heads */
    const uint64_t budget = (uint64_t)(2 * (uint64_t)(0.25f * n) * ((double)pb / 16));
    for (uint32_t l = 0; l < 3; l++) {
        const uint64_t layer_bytes = list_bytes(c, s, l, 0) + list_bytes(c, s, l, 1);
        printf("adakv: layer %u: %llu bytes (heads %llu, %llu)\n", l, (unsigned long long)layer_bytes,
               (unsigned long long)list_bytes(c, s, l, 0), (unsigned long long)list_bytes(c, s, l, 1));
        assert_true(layer_bytes <= (budget > floor_bytes ? budget : floor_bytes));
    }
    skv_cache_destroy(c);
}

/* Keys that overflow fp16 score -inf under knorm: candidates of no utility, dropped
 * first (RDR used to protect every infinite score, so they stayed and the compression
 * freed nothing of them); the decode of what is held stays finite. */
static void test_infinite_scores_dropped(void **state)
{
    (void)state;
    skv_cache_desc d = make_desc(0x1, 0.5f, 1, 1, 64, 16);
    d.scorer = SKV_SCORER_KNORM;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    const uint32_t n = 200;
    float *k = malloc(n * 64 * 4), *v = malloc(n * 64 * 4);
    int32_t pos[200];
    test_rng r = {99};
    for (uint32_t t = 0; t < n; t++) {
        pos[t] = (int32_t)t;
        for (uint32_t i = 0; i < 64; i++) {
            k[t * 64 + i] = t >= 10 && t < 60 && i == 3 ? 1e6f : test_gauss(&r); /* 1e6: inf in fp16 */
            v[t * 64 + i] = test_gauss(&r);
        }
    }
    assert_ok(skv_append(c, s, 0, n, SKV_F32, k, v, pos));
    assert_ok(skv_compress(c, s));
    int32_t held_pos[200];
    size_t held;
    assert_ok(skv_seq_positions(c, s, 0, 0, held_pos, n, &held));
    assert_true(held <= n / 2);
    for (size_t i = 0; i < held; i++)
        if (held_pos[i] >= 10 && held_pos[i] < 60)
            fail_msg("position %d (an infinite key) is still held", held_pos[i]);
    float q[2 * 64], o[2 * 64];
    for (int i = 0; i < 2 * 64; i++)
        q[i] = test_gauss(&r);
    assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, o));
    for (int i = 0; i < 2 * 64; i++)
        assert_true(isfinite(o[i]));
    free(k), free(v);
    skv_cache_destroy(c);
}

/* PyramidKV as kvpress has it: budgets falling linearly over the layers (mean B, from
 * 2B - B/20 to B/20), each cut to what its layer holds with the excess given to layers
 * with room, so the whole budget is used (at 90% of 800 tokens, layer 0's 1404 would
 * leave 604 unused: 1556 of 2160 F16 tokens kept); and uniform when the pyramid's last
 * layer could not hold its sinks and recent window (at 25%: B/20 = 10 < 36). */
static void test_pyramid(void **state)
{
    (void)state;
    const float ratios[2] = {0.9f, 0.25f};
    const uint32_t n = 800, L = 3;
    for (int ri = 0; ri < 2; ri++) {
        skv_cache_desc d = make_desc(0x1, ratios[ri], L, 2, 64, 16);
        d.budget_rule = SKV_BUDGET_PYRAMID;
        skv_cache *c;
        assert_ok(skv_cache_create(ctx, &d, &c));
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        test_rng r = {6};
        fill(c, s, n, &r, NULL, NULL);
        assert_ok(skv_compress(c, s));
        uint64_t pb, held[3], total = 0;
        assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &pb));
        for (uint32_t l = 0; l < L; l++) {
            held[l] = skvi_seq_list(c, &c->seqs[s], l, 0, SKV_TIER_F16)->tokens;
            assert_int_equal(held[l], skvi_seq_list(c, &c->seqs[s], l, 1, SKV_TIER_F16)->tokens);
            total += held[l];
        }
        printf("pyramid at %.2f: tokens kept per layer %llu %llu %llu\n", ratios[ri], (unsigned long long)held[0],
               (unsigned long long)held[1], (unsigned long long)held[2]);
        const uint64_t budget = (uint64_t)(L * ratios[ri] * n);
        assert_true(total <= budget && total + L * 16 > budget); /* all of it, less page rounding */
        if (ri == 0) {
            assert_int_equal(held[0], n);
            assert_true(held[1] > held[2] && held[2] > (uint64_t)(ratios[ri] * n / 20) + 16);
        } else {
            for (uint32_t l = 1; l < L; l++) /* uniform */
                assert_true(held[l] + 16 > held[0] && held[0] + 16 > held[l]);
        }
        skv_cache_destroy(c);
    }
}

/* The device solver (cl/rdr.cl) makes exactly the host solver's choices: same input,
 * same choices, for several tier mixes, budgets and sizes, ties included. */
static void test_device_solver_equals_reference(void **state)
{
    (void)state;
    skv_cache *c = make(0xF, 0.5f, 1, 1, 64, 16);
    test_rng r = {7};
    const uint32_t sizes[3] = {1, 777, 5000};
    const uint32_t tiers[3] = {0x1, 0x5, 0xF};
    skv_rdr_item *items = malloc(5000 * sizeof *items);
    uint8_t *a = malloc(5000), *b = malloc(5000);
    for (int si = 0; si < 3; si++)
        for (int ti = 0; ti < 3; ti++)
            for (int bi = 1; bi <= 4; bi++) {
                skv_rdr_problem p;
                memset(&p, 0, sizeof p);
                uint32_t n = sizes[si];
                for (uint32_t i = 0; i < n; i++) {
                    double x = rng_uniform(&r);
                    items[i].u = (float)(i % 5 == 0 ? 0.25 : x * x); /* some ties */
                    items[i].key_energy = (float)(0.5 + rng_uniform(&r));
                    items[i].current = (uint8_t)(i % 7 == 0 ? (tiers[ti] & 0x4 ? 2 : 0) : 0);
                }
                p.items = items, p.n = n, p.tiers = tiers[ti], p.page_tokens = 16;
                const double mk[4] = {0, 0.0093, 0.034, 0.119}, mv[4] = {0, 2e-5, 5.9e-3, 0.149};
                for (int t = 0; t < 4; t++) {
                    p.mse_k[t] = mk[t], p.mse_v[t] = mv[t];
                    p.page_bytes[t] = skvi_tier_page_bytes((skv_tier)t, 64, 16);
                    p.token_bytes[t] = (double)p.page_bytes[t] / 16;
                }
                p.budget = (uint64_t)(n * p.token_bytes[0] * bi / 5.0);
                int rc_dev = 0;
                assert_ok(skvi_rdr_solve_device(c, &p, a, &rc_dev));
                int rc_host = skv_rdr_solve(&p, b);
                assert_int_equal(rc_dev, rc_host);
                if (rc_host == 0 && memcmp(a, b, n) != 0) {
                    uint32_t i = 0;
                    while (a[i] == b[i])
                        i++;
                    fail_msg("n %u tiers 0x%x budget %d/5: item %u (u %.9g, energy %.9g): device %u, host %u", n,
                             tiers[ti], bi, i, items[i].u, items[i].key_energy, a[i], b[i]);
                }
            }
    free(items), free(a), free(b);
    skv_cache_destroy(c);
}

/* A host backend that counts its calls (the steps of one search). */
typedef struct counting_backend {
    const skv_rdr_problem *p;
    uint32_t calls;
} counting_backend;

static int counting_choose(void *user, float lambda, uint8_t *choice, uint64_t *count)
{
    counting_backend *b = user;
    b->calls++;
    memset(count, 0, (SKV_TIER_COUNT + 1) * sizeof *count);
    for (uint64_t i = 0; i < b->p->n; i++) {
        unsigned o = skv_rdr_option(b->p, &b->p->items[i], lambda);
        count[o]++;
        if (choice)
            choice[i] = (uint8_t)o;
    }
    return 0;
}

/* Many problems solved together on the device (a compression's every (layer, kv-head):
 * one launch and one wait for all of their searches, however many steps the longest
 * takes) choose exactly what each alone chooses on the host; awkward sizes, budgets from
 * dropping all to keeping most, poisoned outputs. */
static void test_device_solver_many(void **state)
{
    (void)state;
    skv_cache *c = make(0xF, 0.5f, 1, 1, 64, 16);
    test_rng r = {11};
    enum { M = 7 };
    const uint32_t sizes[M] = {1, 63, 777, 5000, 130, 64, 2049};
    const double shares[M] = {0.9, 0.05, 0.2, 0.4, 0.0, 0.6, 0.33};
    skv_rdr_problem probs[M];
    const skv_rdr_problem *pp[M];
    uint8_t *dev[M], *host[M];
    int rc_dev[M];
    for (int m = 0; m < M; m++) {
        skv_rdr_item *items = malloc(sizes[m] * sizeof *items);
        for (uint32_t i = 0; i < sizes[m]; i++) {
            double x = rng_uniform(&r);
            items[i].u = (float)(i % 5 == 0 ? 0.25 : x * x * x); /* some ties */
            items[i].key_energy = (float)(0.5 + rng_uniform(&r));
            items[i].current = (uint8_t)(i % 7 == 0 ? 1 : 0);
        }
        skv_rdr_problem *p = &probs[m];
        memset(p, 0, sizeof *p);
        p->items = items, p->n = sizes[m], p->tiers = 0xF, p->page_tokens = 16;
        const double mk[4] = {0, 0.0093, 0.034, 0.119}, mv[4] = {0, 2e-5, 5.9e-3, 0.149};
        for (int t = 0; t < 4; t++) {
            p->mse_k[t] = mk[t], p->mse_v[t] = mv[t];
            p->page_bytes[t] = skvi_tier_page_bytes((skv_tier)t, 64, 16);
            p->token_bytes[t] = (double)p->page_bytes[t] / 16;
        }
        p->budget = (uint64_t)(sizes[m] * p->token_bytes[0] * shares[m]) + p->page_bytes[0];
        pp[m] = p;
        dev[m] = malloc(sizes[m]);
        host[m] = malloc(sizes[m]);
        memset(dev[m], 0xEE, sizes[m]);
    }
    const uint64_t waits = c->rdr_waits;
    assert_ok(skvi_rdr_solve_many(c, pp, dev, rc_dev, M));
    uint32_t most = 0; /* the longest search's steps, all in one launch */
    for (int m = 0; m < M; m++) {
        counting_backend cb = {&probs[m], 0};
        skv_rdr_backend be = {counting_choose, &cb};
        assert_int_equal(skv_rdr_solve_with(&probs[m], &be, host[m]), skv_rdr_solve(&probs[m], host[m]));
        most = cb.calls > most ? cb.calls : most;
    }
    assert_int_equal(c->rdr_waits - waits, 1);
    assert_true(most >= 10); /* the budgets make searches of many steps */
    for (int m = 0; m < M; m++) {
        int rc_host = skv_rdr_solve(&probs[m], host[m]);
        assert_int_equal(rc_dev[m], rc_host);
        if (rc_host == 0 && memcmp(dev[m], host[m], sizes[m]) != 0)
            fail_msg("problem %d (n %u, budget %.2f of F16): device and host choices differ", m, sizes[m], shares[m]);
        free((void *)probs[m].items);
        free(dev[m]);
        free(host[m]);
    }
    skv_cache_destroy(c);
}

/* Tokens already in A4V8 moved to a lower tier by RDR are transcoded exactly as the C
 * reference would: decode (key and values), then encode in the lower tier. Every slot of
 * every ADA page is checked against the reference, byte for byte. */
static void test_transcode_exact(void **state)
{
    (void)state;
    const uint32_t H = 1, D = 64, P = 16, n = 400;
    skv_cache *c = make(0xF, 0.35f, 1, H, D, P); /* A4V8 for all no longer fits, A3V4 does */
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {8};
    float *k = malloc((size_t)n * D * 4), *v = malloc((size_t)n * D * 4);
    fill(c, s, n, &r, k, v);
    assert_ok(skv_seq_quantize(c, s, 16, 320, SKV_TIER_A4V8)); /* [16, 320) in A4V8 first */
    assert_ok(skv_compress(c, s));
    int32_t pos[400];
    size_t cnt;
    assert_ok(skv_seq_positions(c, s, 0, 0, pos, n, &cnt));
    int8_t signs[256];
    skv_ref_ada_signs(0, 0, D, signs);
    uint32_t moved = 0, idx = skvi_seq_list(c, &c->seqs[s], 0, 0, SKV_TIER_F16)->tokens;
    assert_ok(skv_context_finish(ctx));
    for (int t = SKV_TIER_A4V8; t <= SKV_TIER_A2V2; t++) {
        const skvi_page_list *l = skvi_seq_list(c, &c->seqs[s], 0, 0, (skv_tier)t);
        const skvi_tier_desc *td = &skvi_tiers[t];
        const skv_ref_ada_params *pt = &c->ada[t], *p4 = &c->ada[SKV_TIER_A4V8];
        uint32_t vb = skv_ref_value_bytes(D, td->value_bits, td->value_group);
        uint64_t pb;
        assert_ok(skv_cache_page_bytes(c, (skv_tier)t, &pb));
        unsigned char *got = malloc(pb), *want = malloc(pb);
        for (uint32_t j = 0; j < l->n; j++) {
            size_t off;
            cl_mem buf = skvi_pool_locate(&c->pools[t][SKV_MEM_DEVICE], l->ids[j], &off);
            assert_int_equal(clEnqueueReadBuffer(ctx->queue, buf, CL_TRUE, off, pb, got, 0, NULL, NULL), CL_SUCCESS);
            memcpy(want, got, pb);
            for (uint32_t slot = 0; slot < P && j * P + slot < l->tokens; slot++) {
                int32_t p = pos[idx + j * P + slot];
                float key[64], val[64];
                memcpy(key, k + (size_t)p * D, sizeof key);
                memcpy(val, v + (size_t)p * D, sizeof val);
                for (uint32_t i = 0; i < D; i++)
                    val[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(val[i])); /* as the F16 page held it */
                if (p >= 16 && p < 320 && t != SKV_TIER_A4V8) { /* was A4V8: decode it first */
                    uint32_t w4[64];
                    uint16_t n4;
                    uint8_t v4[512];
                    skv_ref_ada_encode_key(p4, signs, key, w4, &n4);
                    skv_ref_ada_decode_key(p4, signs, w4, n4, key);
                    skv_ref_value_encode(val, D, 8, 32, v4);
                    skv_ref_value_decode(v4, D, 8, 32, val);
                    moved++;
                }
                uint32_t words[64];
                uint16_t norm;
                uint8_t vq[512];
                skv_ref_ada_encode_key(pt, signs, key, words, &norm);
                skv_ref_value_encode(val, D, td->value_bits, td->value_group, vq);
                skv_ref_ada_page_write(want, P, pt->key_words, vb, slot, words, norm, vq, p);
            }
            if (memcmp(got, want, pb) != 0)
                fail_msg("tier %s page %u differs from the reference", td->name, j);
        }
        idx += l->tokens;
        free(got);
        free(want);
    }
    printf("%u tokens moved down from a4v8 and checked\n", moved);
    assert_true(moved > 0);
    free(k), free(v);
    skv_cache_destroy(c);
}

/* Layers of different lengths: each layer's budget is a share of its own tokens (the
 * longer layer is not squeezed to the shorter's budget, nor the shorter kept whole).
 * Decode of the result, after warm-up, makes no host allocation. */
static void test_budget_per_layer_length(void **state)
{
    (void)state;
    const uint32_t lens[2][2] = {{800, 200}, {200, 800}}, H = 2, D = 64, P = 16;
    const float ratio = 0.25f;
    test_rng r = {31};
    for (int order = 0; order < 2; order++) {
        skv_cache *c = make(0x1, ratio, 2, H, D, P);
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        for (uint32_t l = 0; l < 2; l++) {
            const uint32_t n = lens[order][l];
            float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
            int32_t *pos = malloc(n * 4);
            for (uint32_t t = 0; t < n; t++)
                pos[t] = (int32_t)t;
            for (size_t i = 0; i < (size_t)n * H * D; i++) {
                k[i] = test_gauss(&r) + (i % D == 1 ? 3.0f : 0.5f);
                v[i] = test_gauss(&r);
            }
            assert_ok(skv_append(c, s, l, n, SKV_F32, k, v, pos));
            free(k), free(v), free(pos);
        }
        assert_ok(skv_compress(c, s));
        skv_cache_stats cs = {.struct_size = sizeof cs};
        assert_ok(skv_cache_get_stats(c, &cs));
        assert_int_equal(cs.compressions, 1);
        /* one wait for the flush of both layers' pending key statistics, one for the
         * scores and positions of all 2 x 2 (layer, kv-head)s, one for the solver (all
         * heads' searches in one launch) */
        assert_int_equal(cs.compress_host_waits, 3);
        assert_int_equal(c->rdr_waits, 1);
        uint64_t f16_page;
        assert_ok(skv_cache_page_bytes(c, SKV_TIER_F16, &f16_page));
        for (uint32_t l = 0; l < 2; l++)
            for (uint32_t h = 0; h < H; h++) {
                const double budget = ratio * lens[order][l] * ((double)f16_page / P);
                const uint64_t used = list_bytes(c, s, l, h);
                /* within the budget, and short of it by less than a page */
                if (!((double)used <= budget && (double)used > budget - (double)f16_page))
                    fail_msg("layers of %u and %u tokens: layer %u head %u uses %llu bytes of a %.0f-byte budget",
                             lens[order][0], lens[order][1], l, h, (unsigned long long)used, budget);
            }
        /* decode after warm-up allocates nothing on the host either */
        float q[4 * 64], o[4 * 64];
        for (uint32_t i = 0; i < 4 * D; i++)
            q[i] = test_gauss(&r);
        for (uint32_t l = 0; l < 2; l++)
            assert_ok(skv_attention_decode(c, l, &s, 1, SKV_F32, q, 0.125f, SKV_F32, o));
        const long calls = counter.calls;
        for (int step = 0; step < 5; step++)
            for (uint32_t l = 0; l < 2; l++)
                assert_ok(skv_attention_decode(c, l, &s, 1, SKV_F32, q, 0.125f, SKV_F32, o));
        assert_int_equal(counter.calls, calls);
        skv_cache_destroy(c);
    }
}

/* Appends n tokens at positions first.. to every layer (keys as fill's). */
static void append_at(skv_cache *c, skv_seq_id s, uint32_t n, int32_t first, test_rng *r)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim;
    float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t t = 0; t < n; t++)
        pos[t] = first + (int32_t)t;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        for (size_t i = 0; i < (size_t)n * H * D; i++) {
            k[i] = test_gauss(r) + (i % D == 1 ? 3.0f : 0.5f);
            v[i] = test_gauss(r);
        }
        assert_ok(skv_append(c, s, l, n, SKV_F32, k, v, pos));
    }
    free(k), free(v), free(pos);
}

/* The positions RDR left in each tier of (layer 0, head h), as a sorted list per tier. */
static size_t kept_positions(skv_cache *c, skv_seq_id s, uint32_t h, int32_t *out)
{
    size_t n = 0;
    assert_ok(skv_seq_positions(c, s, 0, h, out, 4096, &n));
    return n;
}

/* An allocator that puts 16 guard bytes after every block and checks them on free. */
static int guard_broken;
static void *guard_alloc(void *user, size_t n)
{
    (void)user;
    unsigned char *p = malloc(n + 32);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    memset(p + 16 + n, 0xA5, 16);
    return p + 16;
}
static void guard_free(void *user, void *ptr)
{
    (void)user;
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *)ptr - 16;
    size_t n;
    memcpy(&n, p, sizeof n);
    for (int i = 0; i < 16; i++)
        guard_broken |= p[16 + n + i] != 0xA5;
    free(p);
}

/* skv_seq_quantize into an ADA list whose last page RDR left partly filled: the new
 * tokens fill that page first. The page-id array had no slot for it and was written one
 * past its end (heap overflow; found by test_soak --rdr-tiers). */
static void test_quantize_into_partial_ada_tail(void **state)
{
    (void)state;
    skv_allocator guard = {guard_alloc, guard_free, NULL};
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = getenv("SKV_TEST_DEVICE") && getenv("SKV_TEST_DEVICE")[0] ? getenv("SKV_TEST_DEVICE") : "cpu";
    cd.allocator = &guard;
    skv_context *gctx;
    assert_ok(skv_context_create(&cd, &gctx));
    skv_cache_desc d =
        make_desc((1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4) | (1u << SKV_TIER_A2V2), 0.5f, 1, 1, 64, 16);
    d.recent_window = 16;
    d.slack = 32; /* compressions on append, every 48 tokens */
    skv_cache *c;
    assert_ok(skv_cache_create(gctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {21};
    const skvi_page_list *f16 = skvi_seq_list(c, &c->seqs[s], 0, 0, SKV_TIER_F16), *ada = NULL;
    skv_tier tier = SKV_TIER_A3V4;
    for (int i = 0; i < 60; i++) { /* appends until RDR leaves a partly filled ADA page */
        append_at(c, s, 10, 10 * i, &r);
        for (tier = SKV_TIER_A3V4; tier <= SKV_TIER_A2V2; tier++) {
            ada = skvi_seq_list(c, &c->seqs[s], 0, 0, tier);
            if (ada->tokens % 16 != 0)
                break;
        }
        if (tier <= SKV_TIER_A2V2 && f16->tokens >= 16)
            break;
    }
    uint32_t ada_before = ada->tokens, f16_before = f16->tokens;
    printf("after RDR: %u F16 tokens, %u in tier %d\n", f16_before, ada_before, (int)tier);
    assert_true(ada_before % 16 != 0); /* the case: a partly filled ADA tail page */
    assert_true(f16_before >= 16);
    guard_broken = 0;
    assert_ok(skv_seq_quantize(c, s, 0, 16, tier));
    assert_false(guard_broken);
    assert_int_equal(ada->tokens, ada_before + 16);
    assert_int_equal(ada->n, (ada->tokens + 15) / 16);
    assert_int_equal(f16->tokens, f16_before - 16);
    skv_cache_destroy(c);
    skv_context_destroy(gctx);
    assert_false(guard_broken);
}

/* RDR does not run on a layer with pages in host memory (it reads every page on the
 * device). An append that makes compression due there skips it without work: no key
 * statistics flushed, no host wait (the soak test found each such append paying a
 * flush and a wait for a compression bound to fail, issue 17). Once the pages are
 * fetched, the next append compresses. */
static void test_append_skips_rdr_with_host_pages(void **state)
{
    (void)state;
    skv_cache_desc d = make_desc(1u << SKV_TIER_F16, 0.5f, 1, 1, 64, 16);
    d.host_budget_bytes = 4u << 20;
    d.recent_window = 16;
    d.slack = 48;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    assert_ok(skv_seq_create(c, &s));
    test_rng r = {17};
    append_at(c, s, 40, 0, &r); /* not yet due (48) */
    assert_ok(skv_seq_offload(c, s, 0, 32));
    skv_cache_stats before = {.struct_size = sizeof before}, after = {.struct_size = sizeof after};
    assert_ok(skv_cache_get_stats(c, &before));
    for (int i = 0; i < 4; i++) /* due from the first of these on */
        append_at(c, s, 10, 40 + 10 * i, &r);
    assert_ok(skv_cache_get_stats(c, &after));
    assert_int_equal(after.compressions, before.compressions);
    assert_int_equal(after.compress_host_waits, before.compress_host_waits);
    assert_int_equal(skvi_seq_list(c, &c->seqs[s], 0, 0, SKV_TIER_F16)->tokens, 80);
    assert_status(skv_compress(c, s), SKV_ERR_INVALID_ARG);
    assert_ok(skv_seq_fetch(c, s, 0, 32));
    append_at(c, s, 1, 80, &r); /* due, and every page on the device: compressed */
    assert_ok(skv_cache_get_stats(c, &after));
    assert_int_equal(after.compressions, before.compressions + 1);
    assert_true(skvi_seq_list(c, &c->seqs[s], 0, 0, SKV_TIER_F16)->tokens <= 48);
    skv_cache_destroy(c);
}

/* Kept scores (score_refresh): a compression scores only the tokens without a kept
 * score. Those are scored exactly as a full scoring would; kept ones carry the scores of
 * the compression that read them (they differ from a fresh scoring by the statistics'
 * drift), and the compression's result stays close to one that scores everything: the
 * same choice of tokens up to the measured drift. score_refresh 1 scores everything, as
 * does every refresh-th compression. */
static void test_kept_scores(void **state)
{
    (void)state;
    const uint32_t H = 2, D = 64, P = 16;
    test_rng r = {41};
    const int seeds = getenv("SKV_TEST_SEEDS") ? atoi(getenv("SKV_TEST_SEEDS")) : 1; /* more to measure the spread */
    for (int seed = 0; seed < seeds; seed++)
    for (uint32_t refresh = 1; refresh <= 3; refresh += 2) {
        skv_cache_desc d = make_desc(0xF, 0.25f, 1, H, D, P);
        d.score_refresh = refresh;
        skv_cache *c;
        assert_ok(skv_cache_create(ctx, &d, &c));
        skv_seq_id s;
        assert_ok(skv_seq_create(c, &s));
        append_at(c, s, 700, 0, &r);
        assert_ok(skv_compress(c, s));
        int32_t next = 700;
        for (uint32_t run = 1; run <= 4; run++) {
            append_at(c, s, 61, next, &r);
            next += 61;
            /* a twin that keeps nothing: it scores every token */
            skv_seq_id twin;
            assert_ok(skv_seq_fork(c, s, &twin));
            for (uint32_t h = 0; h < H; h++) { /* a fork keeps its parent's kept scores */
                size_t held = 0;
                assert_ok(skv_seq_scores(c, s, 0, h, NULL, 0, &held));
                float *pa = malloc(held * 4), *pb = malloc(held * 4), *q = malloc(held * 4);
                uint32_t fa[SKV_TIER_COUNT], fb[SKV_TIER_COUNT];
                int32_t *qp = malloc(held * 4);
                assert_ok(skvi_kept_scores_load(c, &c->seqs[s], 0, h, pa, q, qp, fa));
                assert_ok(skvi_kept_scores_load(c, &c->seqs[twin], 0, h, pb, q, qp, fb));
                free(qp);
                assert_memory_equal(fa, fb, sizeof fa);
                for (int t = 0, i = 0; t < SKV_TIER_COUNT; i += skvi_seq_list(c, &c->seqs[s], 0, h, (skv_tier)t)->tokens, t++)
                    assert_memory_equal(pa + i, pb + i, fa[t] * 4);
                free(pa), free(pb), free(q);
            }
            skvi_kept_scores_release(c, &c->seqs[twin]);
            double most = 0;
            size_t kept_total = 0, differ = 0;
            for (uint32_t h = 0; h < H; h++) {
                size_t held = 0;
                assert_ok(skv_seq_scores(c, s, 0, h, NULL, 0, &held));
                float *full = malloc(held * 4), *inc = malloc(held * 4), *ksq = malloc(held * 4);
                size_t n;
                assert_ok(skv_seq_scores(c, s, 0, h, full, held, &n));
                uint32_t from[SKV_TIER_COUNT];
                int32_t *kp = malloc(held * 4), *fp = malloc(held * 4);
                memset(inc, 0xFF, held * 4); /* poisoned: every score must be written */
                memset(kp, 0xFF, held * 4);
                assert_ok(skvi_kept_scores_load(c, &c->seqs[s], 0, h, inc, ksq, kp, from));
                int deferred = 0, kept = 0;
                assert_ok(skvi_scores_rdr(c, s, 0, h, inc, ksq, held, from, &deferred, &kept));
                assert_ok(skvi_positions_enqueue(c, &c->seqs[s], 0, h, kp, held, from));
                assert_ok(skv_context_finish(ctx));
                assert_int_equal(kept, 1);
                assert_ok(skv_seq_positions(c, s, 0, h, fp, held, &n)); /* kept positions are the tokens' */
                assert_memory_equal(kp, fp, held * 4);
                free(kp), free(fp);
                const int refreshing = run % refresh == 0; /* rdr_runs == run: a new epoch */
                double scale = 1e-30; /* the largest |score| of a fresh scoring */
                for (size_t x = 0; x < held; x++)
                    scale = fabs(full[x]) > scale ? fabs(full[x]) : scale;
                size_t i = 0;
                for (int t = 0; t < SKV_TIER_COUNT; t++) {
                    const uint32_t tokens = skvi_seq_list(c, &c->seqs[s], 0, h, (skv_tier)t)->tokens;
                    if (refreshing || refresh == 1)
                        assert_int_equal(from[t], 0);
                    for (uint32_t j = 0; j < tokens; j++, i++) {
                        if (j >= from[t]) { /* scored now: exactly a full scoring's */
                            if (memcmp(&inc[i], &full[i], 4) != 0)
                                fail_msg("refresh %u run %u head %u tier %d token %u: %.9g scored now, %.9g in full",
                                         refresh, run, h, t, j, inc[i], full[i]);
                            continue;
                        }
                        kept_total++;
                        differ += inc[i] != full[i];
                        double e = fabs((double)inc[i] - full[i]) / scale;
                        most = e > most ? e : most;
                    }
                }
                free(full), free(inc), free(ksq);
            }
            printf("refresh %u run %u: %zu kept scores, %zu differ from a fresh scoring, by at most %.3g of the largest\n", refresh,
                   run, kept_total, differ, most);
            if (refresh > 1 && run % refresh != 0)
                assert_true(kept_total > 0 && differ > 0); /* they are kept, and they drifted */
            assert_true(most <= KEPT_SCORE_DRIFT);
            assert_ok(skv_compress(c, s));
            assert_ok(skv_compress(c, twin));
            /* the two compressions keep nearly the same tokens */
            for (uint32_t h = 0; h < H; h++) {
                int32_t a[4096], b[4096];
                size_t na = kept_positions(c, s, h, a), nb = kept_positions(c, twin, h, b), common = 0;
                for (size_t x = 0; x < na; x++)
                    for (size_t y = 0; y < nb; y++)
                        common += a[x] == b[y];
                double overlap = (double)common / (double)(na > nb ? na : nb);
                printf("  head %u: %zu and %zu tokens kept, overlap %.4f\n", h, na, nb, overlap);
                if (refresh == 1)
                    assert_true(na == nb && common == na); /* everything scored: the same result */
                else if (!(overlap >= KEPT_SET_OVERLAP))
                    fail_msg("refresh %u run %u head %u: kept scores keep %zu tokens, a full scoring %zu, %.3f in "
                             "common", refresh, run, h, na, nb, overlap);
            }
            assert_ok(skv_seq_free(c, twin));
        }
        skv_cache_destroy(c);
    }
}

/* "--only PATTERN" or "--skip PATTERN" (cmocka patterns): CTest runs the bit-exact
 * tests again with other build options. */
/* RDR's key-error weight follows the queries the cache has seen (rdr_model.c): kappa/2
 * with kappa = E[scale^2 |q|^2] mean|k|^2 / d, SKVI_KAPPA_DEFAULT before any; a head
 * whose queries are strong (peaked attention: logit noise costs more) keeps fewer tokens
 * at the low tiers than one that has seen none. */
static void test_query_energy(void **state)
{
    (void)state;
    const uint32_t H = 2, D = 64, n = 700;
    skv_cache *a = make(0xF, 0.25f, 1, H, D, 16), *b = make(0xF, 0.25f, 1, H, D, 16);
    skv_seq_id sa, sb;
    assert_ok(skv_seq_create(a, &sa));
    assert_ok(skv_seq_create(b, &sb));
    test_rng ra = {77}, rb = {77};
    fill(a, sa, n, &ra, NULL, NULL);
    fill(b, sb, n, &rb, NULL, NULL);
    assert_true(fabs(skvi_rdr_key_weight(b, 0, 1, 3.0) - SKVI_KAPPA_DEFAULT / 2 * SKVI_KAPPA_SHARE) < 1e-12);
    /* queries of |q|^2 = D c^2 at scale 1/8, kv-head 1's twice as strong as kv-head 0's */
    float q[4 * 64];
    const float c0 = 0.5f, c1 = 0.5f * sqrtf(2.0f);
    for (uint32_t i = 0; i < 4 * D; i++)
        q[i] = (i / D < 2 ? c0 : c1) * (i % 2 ? 1.0f : -1.0f);
    float o[4 * 64];
    for (int step = 0; step < 3; step++)
        assert_ok(skv_attention_decode(b, 0, &sb, 1, SKV_F32, q, 0.125f, SKV_F32, o));
    const double m = 3.0, want0 = 0.125 * 0.125 * D * c0 * c0 * m / D / 2 * SKVI_KAPPA_SHARE;
    assert_true(fabs(skvi_rdr_key_weight(b, 0, 0, m) - want0) < 1e-9 * want0);
    assert_true(fabs(skvi_rdr_key_weight(b, 0, 1, m) - 2 * want0) < 1e-6 * want0);
    /* strong queries: kappa in the hundreds on these keys, against the default 8 */
    for (uint32_t i = 0; i < 4 * D; i++)
        q[i] *= 40.0f;
    for (int step = 0; step < 300; step++)
        assert_ok(skv_attention_decode(b, 0, &sb, 1, SKV_F32, q, 0.125f, SKV_F32, o));
    assert_ok(skv_compress(a, sa));
    assert_ok(skv_compress(b, sb));
    for (uint32_t h = 0; h < H; h++) {
        uint32_t low_a = 0, low_b = 0;
        for (int t = SKV_TIER_A3V4; t < SKV_TIER_COUNT; t++) {
            low_a += skvi_seq_list(a, &a->seqs[sa], 0, h, (skv_tier)t)->tokens;
            low_b += skvi_seq_list(b, &b->seqs[sb], 0, h, (skv_tier)t)->tokens;
        }
        printf("head %u: tokens at A3V4 or A2V2: %u with no queries, %u after strong ones\n", h, low_a, low_b);
        assert_true(low_b < low_a);
    }
    skv_cache_destroy(b);
    /* interop decode calls: every 16th call's device queries (f16 here), on the device,
     * read by the next compression; 33 calls are 3 samples */
    skv_cache *ci = make(0xF, 0.25f, 1, H, D, 16);
    skv_seq_id si;
    assert_ok(skv_seq_create(ci, &si));
    test_rng ri = {77};
    fill(ci, si, n, &ri, NULL, NULL);
    cl_context clc;
    cl_command_queue cq;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, &cq, NULL));
    uint16_t qh[4 * 64];
    for (uint32_t i = 0; i < 4 * D; i++)
        qh[i] = skv_ref_f32_to_f16((i / D < 2 ? c0 : c1) * (i % 2 ? 1.0f : -1.0f));
    cl_int e;
    cl_mem qb = clCreateBuffer(clc, CL_MEM_READ_ONLY, sizeof qh + 64, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    assert_int_equal(clEnqueueWriteBuffer(cq, qb, CL_TRUE, 64, sizeof qh, qh, 0, NULL, NULL), CL_SUCCESS);
    cl_mem ob = clCreateBuffer(clc, CL_MEM_READ_WRITE, 4 * 64 * 4, NULL, &e);
    for (int step = 0; step < 33; step++)
        assert_ok(skv_attention_decode_cl(ci, 0, &si, 1, SKV_F16, qb, 64, 0.125f, SKV_F32, ob, 0, 0, NULL, NULL));
    assert_ok(skv_compress(ci, si));
    assert_true(fabs(skvi_rdr_key_weight(ci, 0, 0, m) - want0) < 1e-5 * want0);
    const double c1h = skv_ref_f16_to_f32(skv_ref_f32_to_f16(c1)), want1 = 0.125 * 0.125 * D * c1h * c1h * m / D / 2 * SKVI_KAPPA_SHARE;
    assert_true(fabs(skvi_rdr_key_weight(ci, 0, 1, m) - want1) < 1e-5 * want1);
    clReleaseMemObject(qb);
    clReleaseMemObject(ob);
    skv_cache_destroy(ci);
    skv_cache_destroy(a);
}

/* Caches A (skv_append: compressions run in the call) and B (skv_append_cl: deferred)
 * given the same tokens. */
typedef struct defer_pair {
    skv_cache *a, *b;
    skv_seq_id sa, sb;
    cl_context clc;
    cl_command_queue q;
    test_rng r;
} defer_pair;

/* n tokens of a layer from position `first` (drawn from those two): to A in one call
 * (to_b 0), or to B in calls of `split` tokens (0: one), the first after `wait`. */
static void defer_append(defer_pair *p, int to_b, uint32_t layer, uint32_t n, int32_t first, uint32_t split,
                         cl_event *wait)
{
    const size_t row = (size_t)p->a->desc.kv_heads * p->a->desc.head_dim;
    float *k = malloc(n * row * 4), *v = malloc(n * row * 4);
    int32_t *pos = malloc(n * 4);
    test_rng r = {1000u + 7u * (uint64_t)first + layer};
    for (size_t i = 0; i < n * row; i++)
        k[i] = test_gauss(&r) + (i % 64 == 1 ? 3.0f : 0.5f), v[i] = test_gauss(&r);
    for (uint32_t t = 0; t < n; t++)
        pos[t] = first + (int32_t)t;
    if (!to_b) {
        assert_ok(skv_append(p->a, p->sa, layer, n, SKV_F32, k, v, pos));
        free(k), free(v), free(pos);
        return;
    }
    cl_int e;
    cl_mem kb = clCreateBuffer(p->clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * row * 4, k, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_mem vb = clCreateBuffer(p->clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * row * 4, v, &e);
    assert_int_equal(e, CL_SUCCESS);
    for (uint32_t done = 0; done < n;) {
        uint32_t m = split && split < n - done ? split : n - done;
        assert_ok(skv_append_cl(p->b, p->sb, layer, m, SKV_F32, kb, done * row * 4, vb, done * row * 4, pos + done,
                                wait && !done ? 1 : 0, wait && !done ? wait : NULL, NULL));
        done += m;
    }
    clReleaseMemObject(kb); /* the enqueued appends keep them */
    clReleaseMemObject(vb);
    free(k), free(v), free(pos);
}

/* Once every append completed, B decodes what A does: its deferred compressions ran, in
 * the decode calls, on the tokens A's ran on in the appends. */
static void defer_compare(defer_pair *p, uint64_t compressions)
{
    assert_int_equal(clFinish(p->q), CL_SUCCESS);
    const uint32_t QH = p->a->desc.q_heads, D = p->a->desc.head_dim;
    float *q = malloc((size_t)QH * D * 4), *oa = malloc((size_t)QH * D * 4), *ob = malloc((size_t)QH * D * 4);
    for (uint32_t l = 0; l < p->a->desc.layers; l++) {
        for (size_t i = 0; i < (size_t)QH * D; i++)
            q[i] = test_gauss(&p->r), ob[i] = NAN;
        assert_ok(skv_attention_decode(p->a, l, &p->sa, 1, SKV_F32, q, 0.125f, SKV_F32, oa));
        assert_ok(skv_attention_decode(p->b, l, &p->sb, 1, SKV_F32, q, 0.125f, SKV_F32, ob));
        for (uint32_t h = 0; h < p->a->desc.kv_heads; h++)
            for (int t = 0; t < SKV_TIER_COUNT; t++)
                assert_int_equal(skvi_seq_list(p->a, &p->a->seqs[p->sa], l, h, (skv_tier)t)->tokens,
                                 skvi_seq_list(p->b, &p->b->seqs[p->sb], l, h, (skv_tier)t)->tokens);
        for (size_t i = 0; i < (size_t)QH * D; i++)
            if (!(fabsf(oa[i] - ob[i]) <= 1e-6f))
                fail_msg("after %llu compressions: layer %u: output %zu: %g in the call, %g deferred",
                         (unsigned long long)compressions, l, i, oa[i], ob[i]);
    }
    skv_cache_stats sa = {.struct_size = sizeof sa}, sb = {.struct_size = sizeof sb};
    assert_ok(skv_cache_get_stats(p->a, &sa));
    assert_ok(skv_cache_get_stats(p->b, &sb));
    assert_int_equal(sa.compressions, compressions);
    assert_int_equal(sb.compressions, compressions);
    assert_int_equal(sb.deferred_compressions, compressions);
    assert_int_equal(sb.deferred_pending, 0);
    free(q), free(oa), free(ob);
}

/* skv_append_cl returns without a host wait when it makes RDR due: with its input gated
 * on an unsignalled user event, the calls (and a decode queued behind them) return,
 * nothing is compressed and nothing waited; once the event is set, the compressions run
 * in later calls and give what compressions inside skv_append give. A later append to a
 * layer moves its deferred compression on to include its tokens; freeing a sequence drops
 * its deferred compressions. */
static void test_append_cl_defers(void **state)
{
    (void)state;
    const skv_scorer scorers[] = {SKV_SCORER_KEYDIFF, SKV_SCORER_OBSERVED};
    for (size_t sc = 0; sc < sizeof scorers / sizeof scorers[0]; sc++) {
        defer_pair p = {.r = {41 + sc}};
        assert_ok(skv_context_cl_objects(ctx, &p.clc, NULL, &p.q, NULL));
        skv_cache_desc d = make_desc(0xF, 0.25f, 2, 2, 64, 16);
        d.scorer = scorers[sc];
        d.slack = 24; /* due every 56 tokens */
        assert_ok(skv_cache_create(ctx, &d, &p.a));
        assert_ok(skv_cache_create(ctx, &d, &p.b));
        assert_ok(skv_seq_create(p.a, &p.sa));
        assert_ok(skv_seq_create(p.b, &p.sb));
        cl_int e;
        cl_event gate = clCreateUserEvent(p.clc, &e);
        assert_int_equal(e, CL_SUCCESS);
        for (int b = 0; b < 2; b++) /* 100 tokens: due in each layer's append; A's first (B's queue behind the gate) */
            for (uint32_t l = 0; l < 2; l++)
                defer_append(&p, b, l, 100, 0, 0, b && l == 0 ? &gate : NULL);
        const size_t QD = (size_t)d.q_heads * d.head_dim;
        float *q = calloc(QD, 4);
        cl_mem qb = clCreateBuffer(p.clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, QD * 4, q, &e);
        cl_mem ob = clCreateBuffer(p.clc, CL_MEM_READ_WRITE, QD * 4, NULL, &e);
        /* a decode queued behind them returns too (not with observed attention: it would
         * observe what A's compressions did not) */
        cl_event decoded = NULL;
        if (scorers[sc] != SKV_SCORER_OBSERVED) {
            assert_ok(
                skv_attention_decode_cl(p.b, 1, &p.sb, 1, SKV_F32, qb, 0, 0.125f, SKV_F32, ob, 0, 0, NULL, &decoded));
            cl_int status = CL_COMPLETE;
            assert_int_equal(clGetEventInfo(decoded, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL),
                             CL_SUCCESS);
            assert_true(status > CL_COMPLETE); /* all of it waits for the gate */
        }
        skv_cache_stats st = {.struct_size = sizeof st};
        assert_ok(skv_cache_get_stats(p.b, &st));
        assert_int_equal(st.compressions, 0);
        assert_int_equal(st.compress_host_waits, 0);
        assert_int_equal(st.deferred_pending, 2);
        assert_int_equal(clSetUserEventStatus(gate, CL_COMPLETE), CL_SUCCESS);
        defer_compare(&p, 2);
        /* 70 tokens, to B as 60 (due) + 10 behind a gate: its compression moves on to the 10 */
        cl_event gate2 = clCreateUserEvent(p.clc, &e);
        for (int b = 0; b < 2; b++)
            for (uint32_t l = 0; l < 2; l++)
                defer_append(&p, b, l, 70, 100, 60, b && l == 0 ? &gate2 : NULL);
        assert_int_equal(clSetUserEventStatus(gate2, CL_COMPLETE), CL_SUCCESS);
        clReleaseEvent(gate2);
        defer_compare(&p, 4);
        for (uint32_t l = 0; l < 2; l++)
            defer_append(&p, 1, l, 60, 170, 0, NULL);
        assert_ok(skv_cache_get_stats(p.b, &st));
        assert_true(st.deferred_pending <= 2);
        assert_ok(skv_seq_free(p.b, p.sb));
        assert_ok(skv_cache_get_stats(p.b, &st));
        assert_int_equal(st.deferred_pending, 0);
        if (decoded)
            clReleaseEvent(decoded);
        clReleaseEvent(gate);
        clReleaseMemObject(qb);
        clReleaseMemObject(ob);
        free(q);
        skv_cache_destroy(p.a);
        skv_cache_destroy(p.b);
    }
}

/* A deferred compression whose gate fails (the append's input event ends in an error
 * status): the compression is dropped, not run on pages that were never written, and
 * the cache stays usable for what does not depend on the failed command. */
static void test_failed_gate_drops_compression(void **state)
{
    (void)state;
    defer_pair p = {.r = {43}};
    assert_ok(skv_context_cl_objects(ctx, &p.clc, NULL, &p.q, NULL));
    skv_cache_desc d = make_desc(0xF, 0.25f, 2, 2, 64, 16);
    d.slack = 24;
    assert_ok(skv_cache_create(ctx, &d, &p.a));
    assert_ok(skv_cache_create(ctx, &d, &p.b));
    assert_ok(skv_seq_create(p.b, &p.sb));
    cl_int e;
    cl_event gate = clCreateUserEvent(p.clc, &e);
    assert_int_equal(e, CL_SUCCESS);
    defer_append(&p, 1, 0, 100, 0, 0, &gate);
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(p.b, &st));
    assert_int_equal(st.deferred_pending, 1);
    assert_int_equal(clSetUserEventStatus(gate, -1), CL_SUCCESS); /* the caller's producer failed */
    clFinish(p.q);                                                 /* its status: the driver's choice */
    skv_seq_id other;
    assert_ok(skv_seq_create(p.b, &other));
    float kv[2 * 64] = {0};
    int32_t at = 0;
    skv_append(p.b, other, 1, 1, SKV_F32, kv, kv, &at); /* polls the deferred work (its own status: the driver's) */
    assert_ok(skv_cache_get_stats(p.b, &st));
    assert_int_equal(st.deferred_pending, 0);
    assert_int_equal(st.compressions, 0);
    assert_int_equal(st.deferred_compressions, 0);
    assert_ok(skv_seq_free(p.b, p.sb));
    assert_ok(skv_seq_free(p.b, other));
    assert_ok(skv_cache_get_stats(p.b, &st));
    assert_int_equal(st.pools[SKV_TIER_F16][SKV_MEM_DEVICE].pages_used, 0);
    clReleaseEvent(gate);
    skv_cache_destroy(p.a);
    skv_cache_destroy(p.b);
}

int main(int argc, char **argv)
{
    if (test_filter_args(argc, argv) != 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_holds),
        cmocka_unit_test(test_budget_per_layer_length),
        cmocka_unit_test(test_kept_scores),
        cmocka_unit_test(test_absolute_budget),
        cmocka_unit_test(test_topk_f16_drop),
        cmocka_unit_test(test_runs_on_append),
        cmocka_unit_test(test_budget_is_ceiling),
        cmocka_unit_test(test_append_skips_rdr_with_host_pages),
        cmocka_unit_test(test_quantize_into_partial_ada_tail),
        cmocka_unit_test(test_append_cl_defers),
        cmocka_unit_test(test_failed_gate_drops_compression),
        cmocka_unit_test(test_query_energy),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_needles_at_one_eighth),
        cmocka_unit_test(test_budget_rules),
        cmocka_unit_test(test_pyramid),
        cmocka_unit_test(test_infinite_scores_dropped),
        cmocka_unit_test(test_device_solver_equals_reference),
        cmocka_unit_test(test_device_solver_many),
        cmocka_unit_test(test_transcode_exact),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
