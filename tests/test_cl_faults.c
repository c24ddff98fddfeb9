/* OpenCL fault injection: the test binary links skv statically with the linker wrapping
 * skv's OpenCL calls (-Wl,--wrap, tests/cl_fault_wrap.h), so the N-th call of an
 * operation can fail with a chosen error. For an append, a compression, a fork, a
 * decode, the logits, the scores, an offload, a fetch, an export and an import (on a
 * keydiff cache, and the ones observed attention changes on an observed cache), every
 * call fails in turn:
 *  - the operation returns an error naming the call's OpenCL code;
 *  - the cache is as an unfaulted twin's (lengths, pages in use, sequences, decode
 *    output and scores bit for bit; on the observed cache this catches a failed decode
 *    that had already accumulated attention);
 *  - nothing leaks: the memory objects, kernels and programs skv holds return to their
 *    count once the cache is destroyed;
 *  - under ASan nothing is touched after it is freed (a read still in flight into a
 *    freed array was issue 17's first defect);
 *  - then the same operation succeeds.
 * And every build call of a cache's creation (program from binary or source, build,
 * kernel) fails in turn on a fresh context: the creation fails with the code or falls
 * back (a binary that will not load is rebuilt from source), and a retry succeeds. */
#include "test_util.h"
#include "cache_internal.h"
#include "cl_fault_wrap.h"

#include <time.h>

static double test_now_s(void) { return (double)clock() / CLOCKS_PER_SEC; } /* CPU time, all threads */

static skv_context *ctx;

TEST_SUITE_SETUP_WITH(ctx, NULL, 0)

typedef struct world {
    skv_cache *c;
    skv_seq_id s;
    skv_scorer scorer;
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

/* A cache of 2 layers under RDR (`scorer`; F16, A3V4 or drop) holding 150 tokens per
 * layer (the observed one has decoded twice). */
static void world_make(world *w, skv_scorer scorer)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = 4, d.kv_heads = 2, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 32u << 20;
    d.host_budget_bytes = 8u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = w->scorer = scorer;
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
    float out[4 * 64];
    for (int i = 0; scorer == SKV_SCORER_OBSERVED && i < 2; i++)
        assert_ok(skv_attention_decode(w->c, i, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, out));
}

/* What must not change: lengths, pages in use, sequences, the decode output of both
 * layers and two heads' scores. Taking it decodes (which the observed scorer counts). */
typedef struct snapshot {
    uint64_t len[2], pages, sequences;
    float out[2][4 * 64];
    float scores[2][200];
    size_t held[2];
} snapshot;

static void snap(world *w, snapshot *s)
{
    memset(s, 0, sizeof *s);
    for (uint32_t l = 0; l < 2; l++) {
        assert_ok(skv_seq_length(w->c, w->s, l, &s->len[l]));
        uint64_t host;
        assert_ok(skv_seq_host_pages(w->c, w->s, &host));
        if (!host) /* scores need every page on the device */
            assert_ok(skv_seq_scores(w->c, w->s, l, 1 - l, s->scores[l], 200, &s->held[l]));
        assert_ok(skv_attention_decode(w->c, l, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, s->out[l]));
    }
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(w->c, &st));
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        s->pages += st.pools[t][SKV_MEM_DEVICE].pages_used + 1000000 * st.pools[t][SKV_MEM_HOST].pages_used;
    s->sequences = st.sequences;
}

enum { OP_APPEND, OP_COMPRESS, OP_FORK, OP_DECODE, OP_LOGITS, OP_SCORES, OP_OFFLOAD, OP_FETCH, OP_EXPORT, OP_IMPORT };
static const char *const op_names[] = {"append", "compress", "fork",  "decode", "logits",
                                       "scores", "offload",  "fetch", "export", "import"};

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

/* The error of an operation that cleaned up after itself with other calls ("": read
 * skv_last_error). */
static char op_error[512];

static skv_status run_op(world *w, int op)
{
    op_error[0] = 0;
    if (op == OP_APPEND)
        return append_n(w, 1, 50, 150, 77);
    if (op == OP_COMPRESS)
        return skv_compress(w->c, w->s);
    if (op == OP_FORK) { /* a fork's device work is its first append: the shared partial page is copied */
        skv_seq_id child;
        skv_status st = skv_seq_fork(w->c, w->s, &child);
        if (st != SKV_OK)
            return st;
        skv_seq_id parent = w->s;
        w->s = child;
        st = append_n(w, 0, 5, 150, 99);
        w->s = parent;
        if (st != SKV_OK) { /* the parent must be as it was: the twin had no child */
            snprintf(op_error, sizeof op_error, "%s", skv_last_error());
            assert_ok(skv_seq_free(w->c, child));
        }
        return st;
    }
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
    if (op == OP_SCORES) {
        float scores[200];
        size_t held;
        return skv_seq_scores(w->c, w->s, 0, 1, scores, 200, &held);
    }
    float out[4 * 64];
    return skv_attention_decode(w->c, 0, &w->s, 1, SKV_F32, w->q, 0.125f, SKV_F32, out);
}

typedef struct live {
    long mem, kernel, program;
} live;

static live live_now(void) { return (live){cl_live_mem, cl_live_kernel, cl_live_program}; }

static void same_live(live a, live b, const char *what, long call)
{
    if (a.mem != b.mem || a.kernel != b.kernel || a.program != b.program)
        fail_msg("%s (call %ld): OpenCL objects leaked: memory objects %ld -> %ld, kernels %ld -> %ld, programs %ld -> %ld",
                 what, call, a.mem, b.mem, a.kernel, b.kernel, a.program, b.program);
}

static void same_snapshot(const snapshot *want, const snapshot *got, int op, skv_scorer scorer, long call,
                          const char *after)
{
    if (memcmp(want, got, sizeof *want) != 0)
        fail_msg("%s (scorer %d): after call %ld %s, the cache is not the twin's (length %llu/%llu -> %llu/%llu, "
                 "pages %llu -> %llu, sequences %llu -> %llu, decode %s, scores %s)",
                 op_names[op], (int)scorer, call, after, (unsigned long long)want->len[0],
                 (unsigned long long)want->len[1], (unsigned long long)got->len[0], (unsigned long long)got->len[1],
                 (unsigned long long)want->pages, (unsigned long long)got->pages,
                 (unsigned long long)want->sequences, (unsigned long long)got->sequences,
                 memcmp(want->out, got->out, sizeof want->out) ? "differs" : "equal",
                 memcmp(want->scores, got->scores, sizeof want->scores) ? "differ" : "equal");
}

/* Every OpenCL call of the operation fails in turn (a fresh world each time), on a
 * world with `scorer`. A fault the operation absorbs (a failed flush, a status query
 * answered by a wait) must leave what the operation's success leaves. */
static void every_call_fails(int op, skv_scorer scorer)
{
    /* twins: the cache after the snapshots alone, and after the operation succeeded
     * (which also makes every object the context makes lazily) */
    snapshot want_before, want_failed, want_done, scratch;
    world t;
    world_make(&t, scorer);
    prepare_op(&t, op);
    snap(&t, &want_before);
    assert_ok(skv_context_finish(ctx));
    snap(&t, &want_failed);
    skv_cache_destroy(t.c);
    world_make(&t, scorer);
    prepare_op(&t, op);
    snap(&t, &scratch);
    assert_ok(skv_context_finish(ctx));
    assert_ok(run_op(&t, op));
    assert_ok(skv_context_finish(ctx));
    snap(&t, &want_done);
    skv_cache_destroy(t.c);
    const live base = live_now();
    long n_calls = -1, absorbed = 0;
    for (long i = 0; n_calls < 0 || i < n_calls; i++) {
        world w;
        world_make(&w, scorer);
        prepare_op(&w, op);
        snapshot before, after;
        snap(&w, &before);
        assert_memory_equal(&before, &want_before, sizeof before);
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
        char why[512];
        snprintf(why, sizeof why, "%s", op_error[0] ? op_error : skv_last_error());
        assert_ok(skv_context_finish(ctx));
        snap(&w, &after);
        if (st == SKV_OK) {
            if (!cl_fault_absorbable())
                fail_msg("%s: call %ld (%s) failed, the operation returned OK", op_names[op], i, cl_fault_name);
            absorbed++;
            same_snapshot(&want_done, &after, op, scorer, i, "failed and the operation absorbed it");
            skv_cache_destroy(w.c);
            same_live(base, live_now(), op_names[op], i);
            continue;
        }
        if (!strstr(why, "CL_OUT_OF_RESOURCES") && !strstr(why, "CL_MEM_OBJECT_ALLOCATION_FAILURE") &&
            !strstr(why, "argument"))
            fail_msg("%s: call %ld failed; the error does not name the OpenCL code: %s", op_names[op], i, why);
        same_snapshot(&want_failed, &after, op, scorer, i, "failed");
        assert_ok(run_op(&w, op)); /* and then it works */
        skv_cache_destroy(w.c);
        same_live(base, live_now(), op_names[op], i);
    }
    printf("%s (scorer %d): each of its %ld OpenCL calls failed in turn (%ld absorbed)\n", op_names[op], (int)scorer,
           n_calls, absorbed);
    assert_true(n_calls > 3);
    assert_true(absorbed * 4 < n_calls); /* most faults are reported */
}

static void test_append_faults(void **state)
{
    (void)state;
    every_call_fails(OP_APPEND, SKV_SCORER_KEYDIFF);
}

static void test_compress_faults(void **state)
{
    (void)state;
    every_call_fails(OP_COMPRESS, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_COMPRESS, SKV_SCORER_OBSERVED);
    every_call_fails(OP_FORK, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_SCORES, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_SCORES, SKV_SCORER_OBSERVED);
}

static void test_decode_faults(void **state)
{
    (void)state;
    every_call_fails(OP_DECODE, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_DECODE, SKV_SCORER_OBSERVED);
    every_call_fails(OP_LOGITS, SKV_SCORER_KEYDIFF);
}

static void test_move_faults(void **state)
{
    (void)state;
    every_call_fails(OP_OFFLOAD, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_FETCH, SKV_SCORER_KEYDIFF);
}

static void test_export_import_faults(void **state)
{
    (void)state;
    every_call_fails(OP_EXPORT, SKV_SCORER_KEYDIFF);
    every_call_fails(OP_IMPORT, SKV_SCORER_KEYDIFF);
    free(exported);
    exported = NULL;
}

/* Every build call of a cache's creation fails in turn, on a fresh context each time
 * (its programs come from the disk cache, or from source when a binary will not load):
 * the creation fails naming the code, or falls back and succeeds; a retry succeeds; and
 * once the cache and the context are destroyed no program, kernel or memory object is
 * left. */
/* Launch shapes: a kernel name, the local size (or the global one where skv leaves the
 * local size to the driver, which derives it from the global), and a zero offset or
 * not. PoCL compiles a kernel anew for every shape it meets. */
#define MAX_SHAPES 512
static struct shape {
    char name[32];
    size_t size[3];
    int offset;
} shapes[MAX_SHAPES];
static int n_shapes, shapes_full;

static void note_shape(cl_kernel k, cl_uint dims, const size_t *offset, const size_t *global, const size_t *local)
{
    struct shape sh;
    memset(&sh, 0, sizeof sh);
    if (clGetKernelInfo(k, CL_KERNEL_FUNCTION_NAME, sizeof sh.name, sh.name, NULL) != CL_SUCCESS)
        strcpy(sh.name, "?");
    for (cl_uint d = 0; d < dims && d < 3; d++) {
        sh.size[d] = local ? local[d] : global[d];
        sh.offset |= offset && offset[d];
    }
    for (int i = 0; i < n_shapes; i++)
        if (!memcmp(&shapes[i], &sh, sizeof sh))
            return;
    if (n_shapes == MAX_SHAPES)
        shapes_full = 1;
    else
        shapes[n_shapes++] = sh;
}

/* Many RDR caches one after another on one context, each fed a different number of
 * tokens in pieces of changing sizes, compressing on append as a runtime's would: every
 * kernel is launched in at most a few shapes however the counts change (the cause of
 * RDR's slowdown in issue 26: PoCL built a kernel for almost every compression's job
 * count), and each cache leaves nothing behind (memory objects, kernels, programs).
 * Times are printed, not checked (tests do not time): the last cache's against the
 * first's. */
static void test_many_caches_one_context(void **state)
{
    (void)state;
    n_shapes = shapes_full = 0;
    cl_launch_hook = note_shape;
    /* the context keeps the programs it built (one set per scorer and tier): the counts
     * settle once each scorer has had a cache (rounds 0-2), and must not move after */
    long mem0 = 0, kernel0 = 0, program0 = 0;
    double first_s = 0, last_s = 0;
    const skv_scorer scorers[3] = {SKV_SCORER_KEYDIFF, SKV_SCORER_OBSERVED, SKV_SCORER_MANIFOLD};
    for (int round = 0; round < 6; round++) {
        skv_cache_desc d;
        skv_cache_desc_init(&d);
        d.layers = 2, d.q_heads = 4, d.kv_heads = 2, d.head_dim = 64, d.page_tokens = 16;
        d.device_budget_bytes = 32u << 20;
        d.tiers = 0xF;
        d.scorer = scorers[round % 3];
        d.retention = SKV_RETENTION_RDR;
        d.budget_ratio = round % 2 ? 0.3f : 0.15f;
        d.recent_window = 32;
        d.slack = 32;
        world w = {0};
        assert_ok(skv_cache_create(ctx, &d, &w.c));
        assert_ok(skv_seq_create(w.c, &w.s));
        test_rng r = {300 + (uint64_t)round};
        for (int i = 0; i < 4 * 64; i++)
            w.q[i] = test_gauss(&r);
        const double t0 = test_now_s();
        for (uint32_t len = 0, end = 600 + 37 * (uint32_t)round; len < end;) {
            uint32_t m = 1 + rng_u32(&r) % 23;
            m = m > end - len ? end - len : m;
            float out[4 * 64];
            for (uint32_t l = 0; l < 2; l++) {
                assert_ok(append_n(&w, l, m, (int32_t)len, rng_u64(&r)));
                assert_ok(skv_attention_decode(w.c, l, &w.s, 1, SKV_F32, w.q, 0.125f, SKV_F32, out));
            }
            len += m;
        }
        const double s = test_now_s() - t0;
        if (round == 0)
            first_s = s;
        last_s = s;
        skv_cache_stats st = {.struct_size = sizeof st};
        assert_ok(skv_cache_get_stats(w.c, &st));
        assert_true(st.compressions > 10);
        skv_cache_destroy(w.c);
        printf("round %d: live mem %ld kernels %ld programs %ld\n", round, cl_live_mem, cl_live_kernel, cl_live_program);
        if (round < 3)
            mem0 = cl_live_mem, kernel0 = cl_live_kernel, program0 = cl_live_program;
        assert_int_equal(cl_live_mem, mem0);
        assert_int_equal(cl_live_kernel, kernel0);
        assert_int_equal(cl_live_program, program0);
    }
    cl_launch_hook = NULL;
    assert_false(shapes_full);
    int worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < n_shapes; i++) {
        int same = 0;
        for (int j = 0; j < n_shapes; j++)
            same += !strcmp(shapes[i].name, shapes[j].name);
        if (same > worst)
            worst = same, worst_name = shapes[i].name;
    }
    printf("6 RDR caches: %d launch shapes over every kernel, at most %d of %s; first cache %.3f s, last %.3f s of CPU\n",
           n_shapes, worst, worst_name, first_s, last_s);
    assert_true(worst <= 4); /* the main shape, the rest at an offset, and the fixed ones */
}

static void test_build_faults(void **state)
{
    (void)state;
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = 4, d.kv_heads = 2, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 8u << 20;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = SKV_SCORER_KEYDIFF;
    d.retention = SKV_RETENTION_RDR;
    long n_calls = -1, failed = 0, absorbed = 0;
    for (long i = 0; n_calls < 0 || i < n_calls; i++) {
        const live base = live_now();
        skv_context_desc cd;
        skv_context_desc_init(&cd);
        cd.device = "cpu";
        skv_context *fresh;
        assert_ok(skv_context_create(&cd, &fresh));
        skv_cache *c = NULL;
        cl_build_calls = 0;
        cl_build_fault_at = i;
        skv_status st = skv_cache_create(fresh, &d, &c);
        cl_build_fault_at = -1;
        if (cl_build_calls <= i) { /* the creation makes i build calls */
            assert_ok(st);
            n_calls = i;
        } else if (st == SKV_OK) {
            absorbed++; /* a cached binary that would not load: rebuilt from source */
        } else {
            failed++;
            const char *why = skv_last_error();
            if (!strstr(why, "CL_BUILD_PROGRAM_FAILURE") && !strstr(why, "CL_OUT_OF_RESOURCES") &&
                !strstr(why, "CL_OUT_OF_HOST_MEMORY"))
                fail_msg("build call %ld failed; the error does not name the OpenCL code: %s", i, why);
            assert_null(c);
            assert_ok(skv_cache_create(fresh, &d, &c)); /* and then it works */
        }
        skv_cache_destroy(c);
        skv_context_destroy(fresh);
        same_live(base, live_now(), "cache creation", i);
    }
    printf("cache creation: each of its %ld build calls failed in turn (%ld failed the creation, %ld fell back)\n",
           n_calls, failed, absorbed);
    assert_true(n_calls > 3 && failed > 0);
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
        cmocka_unit_test(test_build_faults),
        cmocka_unit_test(test_many_caches_one_context),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
