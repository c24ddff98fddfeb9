/* OpenCL fault injection: the test binary links skv statically with the linker wrapping
 * skv's OpenCL calls (-Wl,--wrap, tests/CMakeLists.txt), so the N-th call of an operation
 * can fail with a chosen error. For an append, a compression, a decode, the logits, an
 * offload, a fetch, an export and an import, every call fails in turn: the operation returns an error naming the call's OpenCL code, the cache
 * is unchanged (length, pages in use, decode output bit for bit), and under ASan nothing
 * is touched after it is freed (a read still in flight into a freed array was issue 17's
 * first defect). Then the same operation succeeds. */
#include "test_util.h"
#include "cache_internal.h"
#include "cl_fault_wrap.h"

static skv_context *ctx;

TEST_SUITE_SETUP_WITH(ctx, NULL, 0)

typedef struct world {
    skv_cache *c;
    skv_seq_id s;
    float q[4 * 64];
} world;

static skv_status append_n(world *w, uint32_t layer, uint32_t n, int32_t first, uint64_t seed)
{
    test_rng r = {seed};
    float *k = malloc(n * 2 * 64 * 4), *v = malloc(n * 2 * 64 * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t i = 0; i < n * 2 * 64; i++) {
        k[i] = test_gauss(&r) + (i % 64 == 1 ? 3.0f : 0.0f);
        v[i] = test_gauss(&r);
    }
    for (uint32_t t = 0; t < n; t++)
        pos[t] = first + (int32_t)t;
    skv_status st = skv_append(w->c, w->s, layer, n, SKV_F32, k, v, pos);
    free(k), free(v), free(pos);
    return st;
}

/* A cache of 2 layers under RDR (keydiff; F16, A3V4 or drop) holding 150 tokens per layer. */
static void world_make(world *w)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = 4, d.kv_heads = 2, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 32u << 20;
    d.host_budget_bytes = 8u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4); /* each ADA tier adds ~50 ms to a cache's creation */
    d.scorer = SKV_SCORER_KEYDIFF;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = 0.3f;
    d.recent_window = 32;
    d.slack = 1u << 30; /* compression only when asked */
    assert_ok(skv_cache_create(ctx, &d, &w->c));
    assert_ok(skv_seq_create(w->c, &w->s));
    for (uint32_t l = 0; l < 2; l++)
        assert_ok(append_n(w, l, 150, 0, 10 + l));
    test_rng r = {5};
    for (int i = 0; i < 4 * 64; i++)
        w->q[i] = test_gauss(&r);
}

/* What must not change: lengths, pages in use, the decode output of both layers. */
typedef struct snapshot {
    uint64_t len[2], pages, sequences;
    float out[2][4 * 64];
} snapshot;

static void snap(world *w, snapshot *s)
{
    memset(s, 0, sizeof *s);
    for (uint32_t l = 0; l < 2; l++) {
        assert_ok(skv_seq_length(w->c, w->s, l, &s->len[l]));
        assert_ok(skv_attention_decode(w->c, l, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, s->out[l]));
    }
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(w->c, &st));
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        s->pages += st.pools[t][SKV_MEM_DEVICE].pages_used + 1000000 * st.pools[t][SKV_MEM_HOST].pages_used;
    s->sequences = st.sequences;
}

enum { OP_APPEND, OP_COMPRESS, OP_DECODE, OP_LOGITS, OP_OFFLOAD, OP_FETCH, OP_EXPORT, OP_IMPORT };
static const char *const op_names[] = {"append", "compress", "decode", "logits", "offload", "fetch", "export", "import"};

/* An export of the world's sequence (compressed, with pages in host memory), for the
 * export and import operations. */
static uint8_t *exported;
static size_t exported_size;

/* What an operation needs done first (not faulted): a fetch, pages offloaded. */
static void prepare_op(world *w, int op)
{
    if (op == OP_FETCH) {
        assert_ok(skv_seq_offload(w->c, w->s, 0, 64));
        assert_ok(skv_context_finish(ctx));
    }
    if (op == OP_EXPORT || op == OP_IMPORT) { /* mixed tiers, host pages and kept scores */
        assert_ok(skv_compress(w->c, w->s));
        assert_ok(skv_seq_offload(w->c, w->s, 0, 32));
        free(exported);
        assert_ok(skv_seq_export(w->c, w->s, NULL, 0, &exported_size));
        exported = malloc(exported_size);
        assert_ok(skv_seq_export(w->c, w->s, exported, exported_size, &exported_size));
    }
}

static skv_status run_op(world *w, int op)
{
    if (op == OP_APPEND)
        return append_n(w, 1, 50, 150, 77);
    if (op == OP_COMPRESS)
        return skv_compress(w->c, w->s);
    if (op == OP_OFFLOAD)
        return skv_seq_offload(w->c, w->s, 0, 64);
    if (op == OP_FETCH)
        return skv_seq_fetch(w->c, w->s, 0, 64);
    if (op == OP_EXPORT) { /* changes nothing; a failed read must not land in freed memory */
        size_t n = exported_size;
        uint8_t *buf = malloc(n);
        skv_status st = skv_seq_export(w->c, w->s, buf, n, &n);
        if (st == SKV_OK && memcmp(buf, exported, n) != 0)
            fail_msg("export: the bytes differ from the first export");
        free(buf);
        return st;
    }
    if (op == OP_IMPORT) {
        skv_seq_id t;
        return skv_seq_import(w->c, exported, exported_size, &t);
    }
    if (op == OP_LOGITS) {
        static float logits[4 * 200];
        size_t counts[2];
        return skv_attention_logits(w->c, 0, w->s, SKV_F32, w->q, 0.125f, logits, 200, counts);
    }
    float out[4 * 64];
    return skv_attention_decode(w->c, 0, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, out);
}

/* Every OpenCL call of the operation fails in turn (a fresh world each time). */
static void every_call_fails(int op)
{
    long n_calls = -1;
    for (long i = 0; n_calls < 0 || i < n_calls; i++) {
        world w;
        world_make(&w);
        prepare_op(&w, op);
        snapshot before, after;
        snap(&w, &before);
        assert_ok(skv_context_finish(ctx));
        cl_fault_calls = 0;
        cl_fault_at = i;
        skv_status st = run_op(&w, op);
        cl_fault_at = -1;
        if (cl_fault_calls <= i) { /* never reached call i: the operation makes i calls */
            assert_ok(st);
            n_calls = i;
            skv_cache_destroy(w.c);
            break;
        }
        if (st == SKV_OK)
            fail_msg("%s: call %ld of OpenCL failed, the operation returned OK", op_names[op], i);
        const char *why = skv_last_error();
        if (!strstr(why, "CL_OUT_OF_RESOURCES") && !strstr(why, "CL_MEM_OBJECT_ALLOCATION_FAILURE") &&
            !strstr(why, "argument"))
            fail_msg("%s: call %ld failed; the error does not name the OpenCL code: %s", op_names[op], i, why);
        assert_ok(skv_context_finish(ctx));
        snap(&w, &after);
        if (memcmp(&before, &after, sizeof before) != 0)
            fail_msg("%s: after call %ld failed, the cache changed (length %llu/%llu -> %llu/%llu, pages %llu -> %llu)",
                     op_names[op], i, (unsigned long long)before.len[0], (unsigned long long)before.len[1],
                     (unsigned long long)after.len[0], (unsigned long long)after.len[1],
                     (unsigned long long)before.pages, (unsigned long long)after.pages);
        assert_ok(run_op(&w, op)); /* and then it works */
        skv_cache_destroy(w.c);
    }
    printf("%s: each of its %ld OpenCL calls failed in turn\n", op_names[op], n_calls);
    assert_true(n_calls > 3);
}

static void test_append_faults(void **state)
{
    (void)state;
    every_call_fails(OP_APPEND);
}

static void test_compress_faults(void **state)
{
    (void)state;
    every_call_fails(OP_COMPRESS);
}

static void test_decode_faults(void **state)
{
    (void)state;
    every_call_fails(OP_DECODE);
    every_call_fails(OP_LOGITS);
}

static void test_move_faults(void **state)
{
    (void)state;
    every_call_fails(OP_OFFLOAD);
    every_call_fails(OP_FETCH);
}

static void test_export_import_faults(void **state)
{
    (void)state;
    every_call_fails(OP_EXPORT);
    every_call_fails(OP_IMPORT);
    free(exported);
    exported = NULL;
}

int main(int argc, char **argv)
{
    if (test_filter_args(argc, argv) != 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_faults),
        cmocka_unit_test(test_compress_faults),
        cmocka_unit_test(test_decode_faults),
        cmocka_unit_test(test_move_faults),
        cmocka_unit_test(test_export_import_faults),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
