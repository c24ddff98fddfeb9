/* Budget rules: uniform, PyramidKV across layers, AdaKV across heads — sums, shapes,
 * hand-computed cases, ties and bad input. */
#include "test_util.h"

static void test_layers(void **state)
{
    (void)state;
    uint64_t b[32];
    assert_ok(skv_budget_layers(SKV_BUDGET_UNIFORM, 5, 100, b));
    for (int l = 0; l < 5; l++)
        assert_int_equal(b[l], 100);
    /* PyramidKV with 3 layers and B = 200: 390, 200, 10 */
    assert_ok(skv_budget_layers(SKV_BUDGET_PYRAMID, 3, 200, b));
    assert_int_equal(b[0], 390);
    assert_int_equal(b[1], 200);
    assert_int_equal(b[2], 10);
    /* 32 layers, B = 1000: exact total, monotone down, endpoints 1950 and 50 (+-1) */
    assert_ok(skv_budget_layers(SKV_BUDGET_PYRAMID, 32, 1000, b));
    uint64_t total = 0;
    for (int l = 0; l < 32; l++) {
        total += b[l];
        if (l)
            assert_true(b[l] <= b[l - 1] + 1);
    }
    assert_int_equal(total, 32000);
    assert_true(b[0] >= 1949 && b[0] <= 1951);
    assert_true(b[31] >= 49 && b[31] <= 51);
    assert_ok(skv_budget_layers(SKV_BUDGET_PYRAMID, 1, 7, b));
    assert_int_equal(b[0], 7);
    assert_int_equal(skv_budget_layers(SKV_BUDGET_PYRAMID, 0, 7, b), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_budget_layers(SKV_BUDGET_PYRAMID, 3, 7, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_budget_layers((skv_budget_rule)9, 3, 7, b), SKV_ERR_INVALID_ARG);
}

static void test_adakv_small(void **state)
{
    (void)state;
    /* 2 heads x 5 tokens, layer budget 4, safeguard 0.5: each head keeps its top 1, the
     * other 2 go to the best remaining scores across heads: head 0's 0.8 and 0.7. */
    const float s[10] = {0.9f, 0.8f, 0.7f, 0.1f, 0.0f, /* head 0 */
                         0.5f, 0.2f, 0.3f, 0.6f, 0.1f}; /* head 1 */
    uint64_t per[2];
    assert_ok(skv_budget_adakv(s, 2, 5, 4, 0.5f, per));
    assert_int_equal(per[0], 3);
    assert_int_equal(per[1], 1);
    /* safeguard 1: uniform */
    assert_ok(skv_budget_adakv(s, 2, 5, 4, 1.0f, per));
    assert_int_equal(per[0], 2);
    assert_int_equal(per[1], 2);
    /* a budget beyond the tokens keeps everything */
    assert_ok(skv_budget_adakv(s, 2, 5, 99, 0.2f, per));
    assert_int_equal(per[0], 5);
    assert_int_equal(per[1], 5);
    /* ties go to the lower head */
    const float tie[4] = {1, 1, 1, 1};
    assert_ok(skv_budget_adakv(tie, 2, 2, 1, 0.0f, per));
    assert_int_equal(per[0], 1);
    assert_int_equal(per[1], 0);
    assert_int_equal(skv_budget_adakv(NULL, 2, 5, 4, 0.2f, per), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_budget_adakv(s, 2, 5, 4, 1.5f, per), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_budget_adakv(s, 0, 5, 4, 0.2f, per), SKV_ERR_INVALID_ARG);
}

static void test_adakv_random(void **state)
{
    (void)state;
    /* On random scores: the budget is met exactly, every head gets at least its floor, and
     * no kept token scores below a dropped token outside the floors. */
    test_rng r = {11};
    const uint32_t H = 8;
    const uint64_t T = 1000, budget = 2000;
    float *s = malloc(H * T * sizeof *s);
    for (uint64_t i = 0; i < H * T; i++)
        s[i] = (float)rng_uniform(&r) * (i % 3 == 0 ? 2.0f : 1.0f);
    uint64_t per[8], total = 0;
    assert_ok(skv_budget_adakv(s, H, T, budget, 0.2f, per));
    for (uint32_t h = 0; h < H; h++) {
        total += per[h];
        assert_true(per[h] >= (uint64_t)(0.2 * budget / H));
        assert_true(per[h] <= T);
    }
    assert_int_equal(total, budget);
    const uint64_t floor = (uint64_t)(0.2 * budget / H);
    float min_kept = 1e30f, max_dropped = -1e30f;
    for (uint32_t h = 0; h < H; h++) {
        float *row = s + h * T; /* sort this head's scores, highest first */
        for (uint64_t i = 1; i < T; i++)
            for (uint64_t j = i; j > 0 && row[j] > row[j - 1]; j--) {
                float x = row[j];
                row[j] = row[j - 1];
                row[j - 1] = x;
            }
        if (per[h] > floor && row[per[h] - 1] < min_kept)
            min_kept = row[per[h] - 1];
        if (per[h] < T && row[per[h]] > max_dropped)
            max_dropped = row[per[h]];
    }
    assert_true(min_kept >= max_dropped);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layers),
        cmocka_unit_test(test_adakv_small),
        cmocka_unit_test(test_adakv_random),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
