/* The concurrency contract (skv.h, "Threads"): different contexts may be used from
 * different threads at once; a context and everything made from it is used by one
 * thread at a time; errors are kept per thread.
 *
 * THREADS threads start together at a barrier, so that they make the process's first
 * OpenCL calls at the same moment (PoCL 3.1 crashed there; skv serialises its first
 * device enumeration). Each makes its own context and an RDR cache, sharing one kernel
 * cache folder, and runs appends, decodes, a compression, a fork, scores and a bad call
 * whose message must be its own. Then the same work runs alone on the main thread, and
 * every thread's results must equal it bit for bit. The test command also runs this
 * suite built with ThreadSanitizer (build/tsan). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>

#include "test_util.h"

#define THREADS 4
#define Q 4
#define D 64

typedef struct job {
    int id;
    pthread_barrier_t *start;
    /* results */
    float out[3][Q * D]; /* layer 0 before and after compression, layer 1 of the fork */
    float scores[256];
    size_t held;
    uint64_t len[2];
    char failed[256]; /* "" when every call did what it should */
} job;

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        skv_status st_ = (call);                                                                                       \
        if (st_ != SKV_OK) {                                                                                           \
            snprintf(j->failed, sizeof j->failed, "line %d: %s: %s", __LINE__, #call, skv_last_error());               \
            goto done;                                                                                                 \
        }                                                                                                              \
    } while (0)

static void fill(float *x, size_t n, uint64_t seed, float offset)
{
    test_rng r = {seed};
    for (size_t i = 0; i < n; i++)
        x[i] = test_gauss(&r) + (i % D == 3 ? offset : 0.0f);
}

static void *work(void *arg)
{
    job *j = arg;
    skv_context *ctx = NULL;
    skv_cache *c = NULL;
    float *k = malloc(200 * 2 * D * sizeof *k), *v = malloc(200 * 2 * D * sizeof *v), q[Q * D];
    int32_t pos[200];
    if (j->start)
        pthread_barrier_wait(j->start);
    if (!k || !v) {
        snprintf(j->failed, sizeof j->failed, "out of memory");
        goto done;
    }
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = "cpu";
    CHECK(skv_context_create(&cd, &ctx));
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 2, d.q_heads = Q, d.kv_heads = 2, d.head_dim = D, d.page_tokens = 16;
    d.device_budget_bytes = 16u << 20;
    d.scorer = SKV_SCORER_KEYDIFF;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = 0.4f;
    d.recent_window = 32;
    d.slack = 1u << 30; /* compression when asked */
    CHECK(skv_cache_create(ctx, &d, &c));
    skv_seq_id s, f;
    CHECK(skv_seq_create(c, &s));
    for (uint32_t l = 0; l < 2; l++) {
        fill(k, 200 * 2 * D, 100 + l, 2.0f);
        fill(v, 200 * 2 * D, 200 + l, 0.0f);
        for (int t = 0; t < 200; t++)
            pos[t] = t;
        CHECK(skv_append(c, s, l, 150, SKV_F32, k, v, pos));
        CHECK(skv_append(c, s, l, 50, SKV_F32, k + 150 * 2 * D, v + 150 * 2 * D, pos + 150));
    }
    fill(q, Q * D, 300, 0.0f);
    CHECK(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, j->out[0]));
    CHECK(skv_compress(c, s));
    CHECK(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, j->out[1]));
    CHECK(skv_seq_fork(c, s, &f));
    CHECK(skv_attention_decode(c, 1, &f, 1, SKV_F32, q, 0.125f, SKV_F32, j->out[2]));
    CHECK(skv_seq_scores(c, s, 1, 1, j->scores, 256, &j->held));
    for (uint32_t l = 0; l < 2; l++)
        CHECK(skv_seq_length(c, f, l, &j->len[l]));
    /* a bad call: the message on this thread names this thread's layer */
    if (skv_seq_length(c, s, 7 + (uint32_t)j->id, &j->len[0]) != SKV_ERR_INVALID_ARG) {
        snprintf(j->failed, sizeof j->failed, "layer %d was accepted", 7 + j->id);
        goto done;
    }
    char want[32];
    snprintf(want, sizeof want, "layer %d of 2", 7 + j->id);
    if (!strstr(skv_last_error(), want))
        snprintf(j->failed, sizeof j->failed, "thread %d's error is another's: %s", j->id, skv_last_error());
    CHECK(skv_seq_length(c, f, 0, &j->len[0]));
done:
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    free(k);
    free(v);
    return NULL;
}

static void test_threads_equal_alone(void **state)
{
    (void)state;
    static job jobs[THREADS], alone;
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (job){.id = i, .start = &start};
        assert_int_equal(pthread_create(&th[i], NULL, work, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&start);
    alone = (job){.id = 0};
    work(&alone);
    if (alone.failed[0])
        fail_msg("alone: %s", alone.failed);
    assert_true(alone.held > 0 && alone.held < 200); /* the compression dropped some */
    for (int i = 0; i < THREADS; i++) {
        if (jobs[i].failed[0])
            fail_msg("thread %d: %s", i, jobs[i].failed);
        assert_memory_equal(jobs[i].out, alone.out, sizeof alone.out);
        assert_int_equal(jobs[i].held, alone.held);
        assert_memory_equal(jobs[i].scores, alone.scores, alone.held * sizeof *alone.scores);
        assert_memory_equal(jobs[i].len, alone.len, sizeof alone.len);
    }
    printf("%d threads, each on its own context: results equal the same work alone\n", THREADS);
}

int main(int argc, char **argv)
{
    if (test_filter_args(argc, argv) != 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_equal_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
