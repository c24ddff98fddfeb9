/* ADA codec (C reference): codebook, round-trip error per tier against DESIGN.md §5,
 * logits from codes = q . decode(k), and robustness to outlier channels and a mean. */
#include <math.h>

#include "test_util.h"
#include "skv_internal.h"
#include "skv_ref.h"


static void test_codebook(void **state)
{
    (void)state;
    float c[16], b[15];
    skv_ref_ada_codebook(128, 2, c, b);
    /* DESIGN.md §5: d = 128, 2 bits: centroids ~ {0.374, 0.785, 1.212, 1.768},
     * boundaries ~ {0.580, 0.999, 1.490} */
    const float ec[4] = {0.374f, 0.785f, 1.212f, 1.768f}, eb[3] = {0.580f, 0.999f, 1.490f};
    for (int i = 0; i < 4; i++)
        assert_float_equal(c[i], ec[i], 0.004);
    for (int i = 0; i < 3; i++)
        assert_float_equal(b[i], eb[i], 0.004);
    printf("d=128 b_r=2 centroids %.4f %.4f %.4f %.4f\n", c[0], c[1], c[2], c[3]);
}

/* Normalised key MSE E|k - k^|^2 / |k|^2 of a tier's key code. */
static double key_mse(skv_tier tier, uint32_t d, float outlier, float mean, uint64_t seed)
{
    const skvi_tier_desc *t = &skvi_tiers[tier];
    skv_ref_ada_params p;
    skv_ref_ada_params_init(&p, d, t->radius_bits, t->angle_bits);
    int8_t signs[256];
    skv_ref_ada_signs(3, 1, d, signs);
    test_rng r = {seed};
    double err = 0, ref = 0;
    for (int n = 0; n < 4000; n++) {
        float k[256], kh[256];
        uint32_t words[64];
        uint16_t nc;
        for (uint32_t i = 0; i < d; i++)
            k[i] = test_gauss(&r) + mean + (i % 37 == 5 ? outlier * test_gauss(&r) : 0.0f);
        skv_ref_ada_encode_key(&p, signs, k, words, &nc);
        skv_ref_ada_decode_key(&p, signs, words, nc, kh);
        double e = 0, s = 0;
        for (uint32_t i = 0; i < d; i++) {
            e += (k[i] - kh[i]) * (double)(k[i] - kh[i]);
            s += k[i] * (double)k[i];
        }
        err += e / s;
        ref += 1;
    }
    return err / ref;
}

static void test_round_trip_error(void **state)
{
    (void)state;
    /* DESIGN.md §5 figures, within 15% */
    const skv_tier tiers[3] = {SKV_TIER_A4V8, SKV_TIER_A3V4, SKV_TIER_A2V2};
    const double expect[3] = {0.009, 0.033, 0.11};
    const uint32_t dims[3] = {64, 128, 256};
    for (int t = 0; t < 3; t++)
        for (int di = 0; di < 3; di++) {
            double mse = key_mse(tiers[t], dims[di], 0.0f, 0.0f, 17 + t * 3 + di);
            printf("%s d=%u: normalised key MSE %.4f (design %.3f)\n", skvi_tiers[tiers[t]].name, dims[di], mse,
                   expect[t]);
            if (fabs(mse - expect[t]) > 0.15 * expect[t])
                fail_msg("%s d=%u: MSE %.4f not within 15%% of %.3f", skvi_tiers[tiers[t]].name, dims[di], mse,
                         expect[t]);
        }
}

static void test_outliers_and_mean(void **state)
{
    (void)state;
    /* Real post-RoPE keys: a few channels 20x larger, and a mean offset. The Hadamard step
     * spreads them, so the error stays at the Gaussian figure. */
    for (int t = SKV_TIER_A4V8; t <= SKV_TIER_A2V2; t++) {
        double plain = key_mse((skv_tier)t, 128, 0.0f, 0.0f, 5);
        double hard = key_mse((skv_tier)t, 128, 20.0f, 0.7f, 6);
        printf("%s: MSE %.4f plain, %.4f with outlier channels and a mean\n", skvi_tiers[t].name, plain, hard);
        assert_true(hard < 1.25 * plain);
    }
}

static void test_logit_from_codes(void **state)
{
    (void)state;
    const uint32_t dims[3] = {64, 128, 256};
    test_rng r = {99};
    for (int t = SKV_TIER_A4V8; t <= SKV_TIER_A2V2; t++)
        for (int di = 0; di < 3; di++) {
            uint32_t d = dims[di];
            skv_ref_ada_params p;
            skv_ref_ada_params_init(&p, d, skvi_tiers[t].radius_bits, skvi_tiers[t].angle_bits);
            int8_t signs[256];
            skv_ref_ada_signs(0, 5, d, signs);
            float q[256], k[256], kh[256], table[128 * 32];
            uint32_t words[64];
            uint16_t nc;
            for (int n = 0; n < 200; n++) {
                for (uint32_t i = 0; i < d; i++) {
                    q[i] = test_gauss(&r);
                    k[i] = test_gauss(&r) * 3.0f;
                }
                skv_ref_ada_encode_key(&p, signs, k, words, &nc);
                skv_ref_ada_decode_key(&p, signs, words, nc, kh);
                skv_ref_ada_query_table(&p, signs, q, table);
                double dot = 0, mag = 0;
                for (uint32_t i = 0; i < d; i++) {
                    dot += (double)q[i] * kh[i];
                    mag += fabs((double)q[i] * kh[i]);
                }
                float logit = skv_ref_ada_logit(&p, table, words, nc);
                if (fabs(logit - dot) > 1e-5 * mag)
                    fail_msg("%s d=%u: logit from codes %.7g vs q.decode(k) %.7g", skvi_tiers[t].name, d, logit, dot);
            }
        }
}

static void test_norm_code_rounding(void **state)
{
    (void)state;
    /* The fp16 norm is sqrt(n2) rounded to nearest, decided without sqrt. */
    test_rng r = {4};
    for (int n = 0; n < 100000; n++) {
        float n2 = (float)(rng_uniform(&r) * 1e4);
        uint16_t h = skv_ref_ada_norm_code(n2);
        double exact = sqrt((double)n2);
        double got = skv_ref_f16_to_f32(h);
        double next = skv_ref_f16_to_f32((uint16_t)(h + 1)), prev = h ? skv_ref_f16_to_f32((uint16_t)(h - 1)) : 0;
        assert_true(fabs(got - exact) <= fabs(next - exact));
        assert_true(fabs(got - exact) <= fabs(prev - exact));
    }
}

static void test_value_quantisation(void **state)
{
    (void)state;
    const unsigned bits[3] = {8, 4, 2};
    /* relative MSE of uniform quantisation of a Gaussian group over its range */
    test_rng r = {12};
    for (int b = 0; b < 3; b++) {
        double err = 0, ref = 0;
        uint8_t buf[512];
        for (int n = 0; n < 2000; n++) {
            float v[128], vh[128];
            for (int i = 0; i < 128; i++)
                v[i] = test_gauss(&r) * 0.5f + 0.1f;
            skv_ref_value_encode(v, 128, bits[b], 32, buf);
            skv_ref_value_decode(buf, 128, bits[b], 32, vh);
            for (int i = 0; i < 128; i++) {
                float step = 0; /* every value within half a step of its level */
                const uint16_t *params = (const uint16_t *)(buf + 128 * bits[b] / 8);
                step = skv_ref_f16_to_f32(params[2 * (i / 32)]);
                assert_true(fabsf(v[i] - vh[i]) <= 0.5f * step * 1.0001f + 1e-7f);
                err += (v[i] - vh[i]) * (double)(v[i] - vh[i]);
                ref += v[i] * (double)v[i];
            }
        }
        printf("values int%u: relative MSE %.2e\n", bits[b], err / ref);
    }
    assert_int_equal(skv_ref_value_bytes(128, 8, 32), 144); /* DESIGN.md §4 */
    assert_int_equal(skv_ref_value_bytes(128, 4, 32), 80);
    assert_int_equal(skv_ref_value_bytes(128, 2, 32), 48);
    /* directed fp16 rounding brackets the value */
    for (int n = 0; n < 100000; n++) {
        float f = (float)((rng_uniform(&r) - 0.5) * 100.0);
        float lo = skv_ref_f16_to_f32(skv_ref_f32_to_f16_rtn(f)), hi = skv_ref_f16_to_f32(skv_ref_f32_to_f16_rtp(f));
        assert_true(lo <= f && f <= hi);
        assert_true(hi - lo <= fabsf(f) * 1.0e-3f + 1e-7f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codebook),
        cmocka_unit_test(test_round_trip_error),
        cmocka_unit_test(test_outliers_and_mean),
        cmocka_unit_test(test_logit_from_codes),
        cmocka_unit_test(test_norm_code_rounding),
        cmocka_unit_test(test_value_quantisation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
