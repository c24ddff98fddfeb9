/* A small workload that runs every kernel family skv has on the GPU schedule, at awkward
 * sizes, for a simulator to watch (tests/CMakeLists.txt runs it under oclgrind with
 * --data-races --uninitialized --check-api). It also holds decode of an F16-only cache
 * to an fp64 reference computed here, so a simulated run that computes nonsense fails.
 *
 * Families: append_f16, ada_encode, ada_transcode, ada_query, decode_gpu (F16 and ADA,
 * with and without OBSERVE), decode_merge, observe, score_f16/score_ada, key_inv_norms,
 * key_stats, tri_f16/tri_ada, rdr_search, q_energy (an interop decode under RDR),
 * slot_copy, stream_read. (SnapKV's GEMM is
 * CLBlast's, not skv's: not simulated.)
 *
 * Usage: sim_gpu [LANES]   LANES: also run the CPU schedule (lanes 4) after the GPU one.
 * SIM_GPU_TRACE=1 prints each call before it is made. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skv/skv_cl.h"

static int trace;
#define CHECK(call)                                                                                   \
    do {                                                                                              \
        if (trace)                                                                                    \
            fprintf(stderr, "sim_gpu: %s\n", #call);                                                 \
        skv_status st_ = (call);                                                                      \
        if (st_ != SKV_OK) {                                                                          \
            fprintf(stderr, "sim_gpu:%d: %s: %s: %s\n", __LINE__, #call, skv_status_str(st_), skv_last_error()); \
            exit(1);                                                                                  \
        }                                                                                             \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float urand(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 0x2545F4914F6CDD1DULL) >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
}

typedef struct shape {
    uint32_t head_dim, q_heads, kv_heads, page_tokens, tokens;
    skv_scorer scorer;
} shape;

/* fp64 decode of one sequence over an F16-only cache's keys and values (as appended). */
static void reference(const shape *s, const float *k, const float *v, const float *q, float scale, double *out)
{
    const uint32_t D = s->head_dim, G = s->q_heads / s->kv_heads;
    double *w = malloc(s->tokens * sizeof *w);
    for (uint32_t qh = 0; qh < s->q_heads; qh++) {
        const uint32_t h = qh / G;
        double m = -INFINITY, sum = 0;
        for (uint32_t t = 0; t < s->tokens; t++) {
            double dot = 0;
            for (uint32_t i = 0; i < D; i++)
                dot += (double)q[qh * D + i] * k[((size_t)t * s->kv_heads + h) * D + i];
            w[t] = dot * scale;
            m = w[t] > m ? w[t] : m;
        }
        for (uint32_t t = 0; t < s->tokens; t++)
            sum += (w[t] = exp(w[t] - m));
        for (uint32_t i = 0; i < D; i++) {
            double acc = 0;
            for (uint32_t t = 0; t < s->tokens; t++)
                acc += w[t] * v[((size_t)t * s->kv_heads + h) * D + i];
            out[qh * D + i] = acc / sum;
        }
    }
    free(w);
}

/* One cache of shape s with every tier: append in two uneven parts, quantize, compress
 * (RDR), decode, logits and scores. With `f16_check`, first an F16-only cache whose
 * decode must match the fp64 reference. */
static void run_shape(skv_context *ctx, const shape *s, int f16_check)
{
    const uint32_t D = s->head_dim, n = s->tokens;
    const size_t kv = (size_t)n * s->kv_heads * D;
    float *k = malloc(kv * sizeof *k), *v = malloc(kv * sizeof *v), *q = malloc((size_t)s->q_heads * D * sizeof *q);
    float *out = malloc((size_t)s->q_heads * D * sizeof *out), *logits = malloc((size_t)s->q_heads * n * sizeof *logits);
    int32_t *pos = malloc(n * sizeof *pos);
    float *mean = calloc((size_t)s->q_heads * D, sizeof *mean), *absq = malloc((size_t)s->q_heads * D / 2 * sizeof *absq);
    for (size_t i = 0; i < kv; i++) {
        k[i] = urand();
        v[i] = urand();
    }
    for (size_t i = 0; i < (size_t)s->q_heads * D; i++)
        q[i] = urand();
    for (size_t i = 0; i < (size_t)s->q_heads * D / 2; i++)
        absq[i] = 1.0f + 0.5f * urand();
    for (uint32_t t = 0; t < n; t++)
        pos[t] = (int32_t)t;
    const float scale = 1.0f / sqrtf((float)D);
    const uint32_t first = n / 2 + 3;

    for (int pass = f16_check ? 0 : 1; pass < 2; pass++) {
        skv_cache_desc d;
        skv_cache_desc_init(&d);
        d.layers = 1;
        d.q_heads = s->q_heads;
        d.kv_heads = s->kv_heads;
        d.head_dim = D;
        d.page_tokens = s->page_tokens;
        d.device_budget_bytes = 8u << 20;
        d.tiers = pass == 0 ? 1u : (1u << SKV_TIER_COUNT) - 1;
        if (pass == 1) {
            d.scorer = s->scorer;
            d.retention = SKV_RETENTION_RDR;
            d.budget_ratio = 0.4f;
            d.recent_window = 16;
            d.slack = 16;
            d.n_sink = 2;
            d.rope.theta = 10000.0f;
            d.rope.rotary_dims = D;
            d.rope.scaling = 1.0f;
            d.query_mean = mean;
            d.query_abs = absq;
        }
        skv_cache *c;
        skv_seq_id seq;
        CHECK(skv_cache_create(ctx, &d, &c));
        CHECK(skv_seq_create(c, &seq));
        CHECK(skv_append(c, seq, 0, first, SKV_F32, k, v, pos));
        if (pass == 1) /* two full pages of the first part into the middle tier */
            CHECK(skv_seq_quantize(c, seq, 0, 2 * s->page_tokens, SKV_TIER_A3V4));
        CHECK(skv_append(c, seq, 0, n - first, SKV_F32, k + (size_t)first * s->kv_heads * D,
                         v + (size_t)first * s->kv_heads * D, pos + first));
        if (pass == 1)
            CHECK(skv_compress(c, seq));
        for (int step = 0; step < 2; step++)
            CHECK(skv_attention_decode(c, 0, &seq, 1, SKV_F32, q, scale, SKV_F32, out));
        if (pass == 1) { /* an interop decode: RDR measures its queries' energy (q_energy) */
            cl_context clc;
            cl_command_queue queue;
            CHECK(skv_context_cl_objects(ctx, &clc, NULL, &queue, NULL));
            const size_t bytes = (size_t)s->q_heads * D * sizeof *q;
            cl_int e1, e2;
            cl_mem qb = clCreateBuffer(clc, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, q, &e1);
            cl_mem ob = clCreateBuffer(clc, CL_MEM_WRITE_ONLY, bytes, NULL, &e2);
            if (e1 != CL_SUCCESS || e2 != CL_SUCCESS) {
                fprintf(stderr, "sim_gpu: clCreateBuffer failed (%d, %d)\n", e1, e2);
                exit(1);
            }
            CHECK(skv_attention_decode_cl(c, 0, &seq, 1, SKV_F32, qb, 0, scale, SKV_F32, ob, 0, 0, NULL, NULL));
            CHECK(skv_context_finish(ctx));
            clReleaseMemObject(qb);
            clReleaseMemObject(ob);
            CHECK(skv_compress(c, seq)); /* reads the energy back */
        }
        size_t counts[8];
        CHECK(skv_attention_logits(c, 0, seq, SKV_F32, q, scale, logits, n, counts));
        if (pass == 1 && s->scorer != SKV_SCORER_NONE) {
            float *scores = malloc(n * sizeof *scores);
            size_t held;
            for (uint32_t h = 0; h < s->kv_heads; h++)
                CHECK(skv_seq_scores(c, seq, 0, h, scores, n, &held));
            free(scores);
        }
        for (size_t i = 0; i < (size_t)s->q_heads * D; i++)
            if (!isfinite(out[i])) {
                fprintf(stderr, "sim_gpu: decode output %zu is not finite\n", i);
                exit(1);
            }
        if (pass == 0) {
            double *ref = malloc((size_t)s->q_heads * D * sizeof *ref), err = 0, norm = 0;
            reference(s, k, v, q, scale, ref);
            for (size_t i = 0; i < (size_t)s->q_heads * D; i++) {
                err += (out[i] - ref[i]) * (out[i] - ref[i]);
                norm += ref[i] * ref[i];
            }
            free(ref);
            if (!(sqrt(err / norm) < 2e-3)) { /* keys and values are stored as fp16 */
                fprintf(stderr, "sim_gpu: F16 decode differs from fp64: relative L2 %.3g\n", sqrt(err / norm));
                exit(1);
            }
        }
        CHECK(skv_seq_free(c, seq));
        skv_cache_destroy(c);
    }
    free(k);
    free(v);
    free(q);
    free(out);
    free(logits);
    free(pos);
    free(mean);
    free(absq);
}

int main(int argc, char **argv)
{
    int lanes_too = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "LANES") == 0)
            lanes_too = 1;
        else {
            fprintf(stderr, "usage: sim_gpu [LANES]\n");
            return 2;
        }
    }
    trace = getenv("SIM_GPU_TRACE") != NULL;
    skv_context *ctx;
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.disable_program_cache = 1;
    CHECK(skv_context_create(&cd, &ctx));
    double gbps;
    CHECK(skv_measure_read_bandwidth(ctx, 1u << 16, 1, &gbps)); /* stream_read */
    const shape shapes[] = {
        {64, 6, 2, 16, 77, SKV_SCORER_KEYDIFF},      /* 3 q-heads per kv-head */
        {64, 4, 1, 16, 53, SKV_SCORER_OBSERVED},     /* observe, OBSERVE decode */
        {64, 8, 2, 32, 45, SKV_SCORER_TRIATTENTION}, /* 4 per kv-head; tri_f16, tri_ada */
    };
    for (int variant = 0; variant < 1 + lanes_too; variant++) {
        skv_decode_params p = {variant ? SKV_SCHEDULE_LANES : SKV_SCHEDULE_GROUP, variant ? 4 : 0, 64, 2, 0};
        CHECK(skv_context_set_decode_params(ctx, &p));
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            fprintf(stderr, "sim_gpu: %s, head_dim %u, %u/%u heads, page %u, %u tokens, scorer %d\n",
                    variant ? "lanes4" : "group", shapes[i].head_dim, shapes[i].q_heads, shapes[i].kv_heads,
                    shapes[i].page_tokens, shapes[i].tokens, (int)shapes[i].scorer);
            run_shape(ctx, &shapes[i], i == 0);
        }
    }
    skv_context_destroy(ctx);
    fprintf(stderr, "sim_gpu: done\n");
    return 0;
}
