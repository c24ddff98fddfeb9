/* A consumer of an installed skv (tests/package_consumer.sh builds it with CMake's
 * find_package(skv) and with pkg-config): a context on $SKV_TEST_DEVICE (default "cpu",
 * PoCL's CPU device), a small cache, a few appended tokens, one decode step, the result
 * held to attention computed here in double. Exits 0, 77 when there is no such device,
 * else 1. */

/* The consumer's own OpenCL target version: skv's headers must keep it (with -Werror, a
 * -DCL_TARGET_OPENCL_VERSION=120 from skv's package would fail as a redefinition). */
#define CL_TARGET_OPENCL_VERSION 300

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <skv/skv.h>
#include <skv/skv_cl.h>

#if CL_TARGET_OPENCL_VERSION != 300
#error "skv's headers changed the consumer's CL_TARGET_OPENCL_VERSION"
#endif

enum { LAYERS = 2, Q_HEADS = 4, KV_HEADS = 2, HEAD_DIM = 64, TOKENS = 40 };

static int check(skv_status st, const char *what)
{
    if (st == SKV_OK)
        return 0;
    fprintf(stderr, "consumer: %s: %s (%s)\n", what, skv_status_str(st), skv_last_error());
    return 1;
}

/* softmax(scale q.K^T) V for q-head h over kv-head h / (Q_HEADS / KV_HEADS). */
static void reference(const float *q, const float *k, const float *v, float scale, int h, double *out)
{
    const int kvh = h / (Q_HEADS / KV_HEADS);
    double logit[TOKENS], m = -INFINITY, sum = 0;
    for (int t = 0; t < TOKENS; t++) {
        double s = 0;
        for (int i = 0; i < HEAD_DIM; i++)
            s += (double)q[h * HEAD_DIM + i] * k[(t * KV_HEADS + kvh) * HEAD_DIM + i];
        logit[t] = s * scale;
        m = logit[t] > m ? logit[t] : m;
    }
    for (int i = 0; i < HEAD_DIM; i++)
        out[i] = 0;
    for (int t = 0; t < TOKENS; t++) {
        const double w = exp(logit[t] - m);
        sum += w;
        for (int i = 0; i < HEAD_DIM; i++)
            out[i] += w * v[(t * KV_HEADS + kvh) * HEAD_DIM + i];
    }
    for (int i = 0; i < HEAD_DIM; i++)
        out[i] /= sum;
}

int main(void)
{
    if (skv_version() != SKV_VERSION_NUMBER) {
        fprintf(stderr, "consumer: header version %d, library %u\n", SKV_VERSION_NUMBER, skv_version());
        return 1;
    }
    const char *sel = getenv("SKV_TEST_DEVICE");
    if (!sel || !sel[0])
        sel = "cpu";
    skv_device_profile profile;
    skv_status st = skv_device_select(sel, &profile);
    if (st == SKV_ERR_NO_DEVICE) {
        printf("skipped: no '%s' device (%s)\n", sel, skv_last_error());
        return 77;
    }
    if (check(st, "skv_device_select"))
        return 1;

    static float k[TOKENS * KV_HEADS * HEAD_DIM], v[TOKENS * KV_HEADS * HEAD_DIM];
    static float q[Q_HEADS * HEAD_DIM], out[Q_HEADS * HEAD_DIM];
    int32_t positions[TOKENS];
    for (int i = 0; i < TOKENS * KV_HEADS * HEAD_DIM; i++) {
        k[i] = (float)sin(0.37 * i);
        v[i] = (float)cos(0.11 * i + 0.5);
    }
    for (int i = 0; i < Q_HEADS * HEAD_DIM; i++)
        q[i] = (float)sin(0.23 * i + 1.0);
    for (int t = 0; t < TOKENS; t++)
        positions[t] = t;
    const float scale = 0.125f; /* 1 / sqrt(HEAD_DIM) */

    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = sel;
    skv_context *ctx = NULL;
    if (check(skv_context_create(&cd, &ctx), "skv_context_create"))
        return 1;
    int failed = 0;
    cl_context cl_ctx;
    cl_device_id device;
    cl_command_queue compute, transfer;
    failed |= check(skv_context_cl_objects(ctx, &cl_ctx, &device, &compute, &transfer), "skv_context_cl_objects");

    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = LAYERS;
    d.q_heads = Q_HEADS;
    d.kv_heads = KV_HEADS;
    d.head_dim = HEAD_DIM;
    d.page_tokens = 16;
    skv_cache *cache = NULL;
    skv_seq_id seq = 0;
    failed |= check(skv_cache_create(ctx, &d, &cache), "skv_cache_create");
    if (!failed)
        failed |= check(skv_seq_create(cache, &seq), "skv_seq_create");
    for (uint32_t layer = 0; !failed && layer < LAYERS; layer++)
        failed |= check(skv_append(cache, seq, layer, TOKENS, SKV_F32, k, v, positions), "skv_append");
    if (!failed)
        failed |= check(skv_attention_decode(cache, 1, &seq, 1, SKV_F32, q, scale, SKV_F32, out),
                        "skv_attention_decode");

    double max_err = 0;
    for (int h = 0; !failed && h < Q_HEADS; h++) {
        double want[HEAD_DIM];
        reference(q, k, v, scale, h, want);
        for (int i = 0; i < HEAD_DIM; i++) {
            const float got = out[h * HEAD_DIM + i];
            if (!isfinite(got)) {
                fprintf(stderr, "consumer: out[%d][%d] = %g is not finite\n", h, i, (double)got);
                failed = 1;
                break;
            }
            const double err = fabs(got - want[i]);
            max_err = err > max_err ? err : max_err;
        }
    }
    /* keys and values are stored as fp16: a few 1e-3 at most on values of magnitude 1 */
    if (!failed && !(max_err < 2e-2)) {
        fprintf(stderr, "consumer: decode differs from the reference by %g\n", max_err);
        failed = 1;
    }
    skv_cache_destroy(cache);
    skv_context_destroy(ctx);
    if (failed)
        return 1;
    printf("consumer: skv %s (header %d.%d.%d) on '%s': decode of %d tokens ok, max |error| %.2e\n",
           skv_version_string(), SKV_VERSION_MAJOR, SKV_VERSION_MINOR, SKV_VERSION_PATCH, profile.name, TOKENS,
           max_err);
    return 0;
}
