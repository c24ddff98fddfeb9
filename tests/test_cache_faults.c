/* Fault injection in the cache: an allocation failure at each host allocation of an
 * append, a fork, a quantisation, a decode, skv_attention_logits, an offload and a fetch
 * leaves the sequence exactly as it was (length, pages, decode output, scores), leaks
 * nothing, and a retry succeeds. */
#include "test_util.h"
#include "skv/skv_cl.h"

static skv_context *ctx;
static counting_allocator counter;

TEST_COUNTING_SUITE_SETUP(ctx, counter)

typedef struct world {
    skv_cache *c;
    skv_seq_id s;
    float q[8 * 64];
} world;

static void append_n(world *w, uint32_t n, uint64_t seed)
{
    test_rng r = {seed};
    float *k = malloc(n * 2 * 64 * 4), *v = malloc(n * 2 * 64 * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t i = 0; i < n * 2 * 64; i++) {
        k[i] = test_gauss(&r);
        v[i] = test_gauss(&r);
    }
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    assert_ok(skv_append(w->c, w->s, 0, n, SKV_F32, k, v, pos));
    free(k);
    free(v);
    free(pos);
}

/* What must not change: length, host pages, page counts, and the decode output. */
typedef struct snapshot {
    uint64_t len, host;
    uint64_t used[SKV_TIER_COUNT][SKV_MEM_COUNT];
    float out[8 * 64];
    float scores[512];
    size_t n_scores;
} snapshot;

static void take(world *w, snapshot *s)
{
    assert_ok(skv_seq_length(w->c, w->s, 0, &s->len));
    assert_ok(skv_seq_host_pages(w->c, w->s, &s->host));
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(w->c, &st));
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            s->used[t][m] = st.pools[t][m].pages_used;
    if (s->host == 0) {
        assert_ok(skv_attention_decode(w->c, 0, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, s->out));
        assert_ok(skv_seq_scores(w->c, w->s, 0, 1, s->scores, 512, &s->n_scores));
    }
}

static void same(const snapshot *a, const snapshot *b)
{
    assert_int_equal(a->len, b->len);
    assert_int_equal(a->host, b->host);
    assert_memory_equal(a->used, b->used, sizeof a->used);
    if (a->host == 0) {
        assert_memory_equal(a->out, b->out, sizeof a->out);
        assert_int_equal(a->n_scores, b->n_scores);
        assert_memory_equal(a->scores, b->scores, a->n_scores * sizeof(float));
    }
}

typedef skv_status (*op_fn)(world *w, void *arg);

/* Runs op with the k-th allocation failing, for every k until it succeeds. */
static void inject(world *w, op_fn op, void *arg, const char *name)
{
    int failures = 0;
    for (long k = 1;; k++) {
        snapshot before, after;
        take(w, &before);
        counter.calls = 0;
        counter.fail_at = k;
        skv_status st = op(w, arg);
        counter.fail_at = 0;
        if (st == SKV_OK) {
            printf("%s: %d injected failures, then success\n", name, failures);
            return;
        }
        if (st != SKV_ERR_OUT_OF_MEMORY)
            fail_msg("%s, allocation %ld failing: %s (%s)", name, k, skv_status_str(st), skv_last_error());
        failures++;
        take(w, &after);
        same(&before, &after);
    }
}

static skv_status op_append(world *w, void *arg)
{
    (void)arg;
    float k[40 * 2 * 64] = {0}, v[40 * 2 * 64] = {0};
    int32_t pos[40] = {0};
    return skv_append(w->c, w->s, 0, 40, SKV_F32, k, v, pos);
}

static skv_status op_fork(world *w, void *arg)
{
    return skv_seq_fork(w->c, w->s, (skv_seq_id *)arg);
}

static skv_status op_quantize(world *w, void *arg)
{
    (void)arg;
    return skv_seq_quantize(w->c, w->s, 0, 64, SKV_TIER_A3V4);
}

static skv_status op_offload(world *w, void *arg)
{
    (void)arg;
    return skv_seq_offload(w->c, w->s, 0, 1 << 20);
}

static skv_status op_fetch(world *w, void *arg)
{
    (void)arg;
    return skv_seq_fetch(w->c, w->s, 0, 1 << 20);
}

static skv_status op_decode(world *w, void *arg)
{
    (void)arg;
    float out[8 * 64];
    return skv_attention_decode(w->c, 0, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, out);
}

static skv_status op_logits(world *w, void *arg)
{
    (void)arg;
    static float logits[8 * 256];
    size_t counts[2];
    return skv_attention_logits(w->c, 0, w->s, SKV_F32, w->q, 0.125f, logits, 256, counts);
}

static void test_failures_change_nothing(void **state)
{
    (void)state;
    world w;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = 8, d.kv_heads = 2, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 8u << 20;
    d.host_budget_bytes = 8u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = SKV_SCORER_MANIFOLD_WINDOWED; /* key statistics too: pending positions, flushes */
    d.score_window = 32;
    assert_ok(skv_cache_create(ctx, &d, &w.c));
    assert_ok(skv_seq_create(w.c, &w.s));
    test_rng r = {1};
    for (int i = 0; i < 8 * 64; i++)
        w.q[i] = test_gauss(&r);
    append_n(&w, 100, 2); /* a partly filled tail page */
    skv_seq_id child;
    inject(&w, op_fork, &child, "fork");
    inject(&w, op_append, NULL, "append into a shared tail (copy-on-write)");
    inject(&w, op_quantize, NULL, "quantize");
    inject(&w, op_decode, NULL, "decode over F16 and A3V4 pages");
    inject(&w, op_logits, NULL, "logits (its kernels built on first use)");
    inject(&w, op_offload, NULL, "offload");
    inject(&w, op_fetch, NULL, "fetch");
    assert_ok(skv_seq_free(w.c, child));
    skv_cache_destroy(w.c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failures_change_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
