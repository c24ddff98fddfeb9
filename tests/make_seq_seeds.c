/* Writes the seed corpus of fuzz_seq_import (fuzz/fuzz_seq_import.c): real exports of
 * small sequences, one per kind of state the format carries, and near-valid variants
 * (truncated, one byte flipped). Needs an OpenCL device. From the repository root:
 *   build/ci/tests/make_seq_seeds fuzz/corpus/seq_import */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "skv/skv.h"

static const char *dir;

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        skv_status st_ = (call);                                                                                       \
        if (st_ != SKV_OK) {                                                                                           \
            fprintf(stderr, "make_seq_seeds:%d: %s: %s\n", __LINE__, #call, skv_last_error());                         \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

static void put(const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_seq_seeds: cannot write %s\n", path);
        exit(1);
    }
}

static unsigned rng = 12345;
static float gauss(void)
{
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng = rng * 1103515245u + 12345u;
        s += (float)((rng >> 8) & 0xFFFF) / 65536.0f - 0.5f;
    }
    return s * 1.7f;
}

/* n tokens of every layer at positions first + step * t */
static void fill(skv_cache *c, skv_seq_id s, uint32_t layers, uint32_t H, uint32_t n, int32_t first, int32_t step)
{
    float *k = malloc((size_t)n * H * 64 * 4), *v = malloc((size_t)n * H * 64 * 4);
    int32_t *pos = malloc(n * 4);
    for (uint32_t l = 0; l < layers; l++) {
        for (size_t i = 0; i < (size_t)n * H * 64; i++)
            k[i] = gauss() + (i % 64 == 2 ? 2.0f : 0.0f), v[i] = gauss();
        for (uint32_t t = 0; t < n; t++)
            pos[t] = first + step * (int32_t)t;
        CHECK(skv_append(c, s, l, n, SKV_F32, k, v, pos));
    }
    free(k), free(v), free(pos);
}

static void export_to(skv_cache *c, skv_seq_id s, const char *name, int variants)
{
    size_t n;
    CHECK(skv_seq_export(c, s, NULL, 0, &n));
    unsigned char *buf = malloc(n);
    CHECK(skv_seq_export(c, s, buf, n, &n));
    put(name, buf, n);
    if (variants) {
        char v[256];
        snprintf(v, sizeof v, "%s_truncated", name);
        put(v, buf, n / 2);
        buf[n / 3] ^= 0x10; /* the checksum no longer matches */
        snprintf(v, sizeof v, "%s_flipped", name);
        put(v, buf, n);
    }
    printf("%s: %zu bytes\n", name, n);
    free(buf);
}

static skv_cache *make(skv_context *ctx, uint32_t layers, uint32_t H, skv_scorer scorer, uint32_t tiers, int host)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = layers, d.q_heads = 2 * H, d.kv_heads = H, d.head_dim = 64, d.page_tokens = 16;
    d.device_budget_bytes = 4u << 20;
    d.host_budget_bytes = host ? 1u << 20 : 0;
    d.tiers = tiers;
    if (scorer != SKV_SCORER_NONE) {
        d.scorer = scorer;
        d.retention = SKV_RETENTION_RDR;
        d.budget_ratio = 0.5f;
        d.recent_window = 16;
        d.n_sink = 2;
        d.slack = 1u << 30;
        d.score_window = 16;
    }
    skv_cache *c;
    CHECK(skv_cache_create(ctx, &d, &c));
    return c;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seq_seeds DIR\n");
        return 2;
    }
    dir = argv[1];
    mkdir(dir, 0755);
    skv_context *ctx;
    CHECK(skv_context_create(NULL, &ctx));
    const uint32_t ada = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    skv_seq_id s;
    float q[4 * 64], out[4 * 64];
    for (int i = 0; i < 4 * 64; i++)
        q[i] = gauss();

    skv_cache *c = make(ctx, 1, 1, SKV_SCORER_NONE, 1, 0); /* F16 pages only, a partial last page */
    CHECK(skv_seq_create(c, &s));
    put("empty", NULL, 0);
    export_to(c, s, "f16_empty_sequence", 0);
    fill(c, s, 1, 1, 37, 0, 1);
    export_to(c, s, "f16", 1);
    skv_cache_destroy(c);

    c = make(ctx, 2, 2, SKV_SCORER_KEYDIFF, ada, 1); /* RDR: mixed tiers, kept scores, host pages */
    CHECK(skv_seq_create(c, &s));
    fill(c, s, 2, 2, 50, 0, 1);
    CHECK(skv_compress(c, s));
    export_to(c, s, "keydiff_rdr", 1);
    CHECK(skv_seq_offload(c, s, 0, 16));
    CHECK(skv_context_finish(ctx));
    export_to(c, s, "keydiff_rdr_host_pages", 0);
    skv_cache_destroy(c);

    c = make(ctx, 1, 1, SKV_SCORER_MANIFOLD_WINDOWED, 1, 0); /* sparse windows */
    CHECK(skv_seq_create(c, &s));
    fill(c, s, 1, 1, 20, 5, 1000);
    float sc[64];
    size_t held;
    CHECK(skv_seq_scores(c, s, 0, 0, sc, 64, &held)); /* statistics flushed */
    fill(c, s, 1, 1, 3, 30000, 1); /* and pending */
    export_to(c, s, "manifold_windowed", 0);
    skv_cache_destroy(c);

    c = make(ctx, 1, 1, SKV_SCORER_OBSERVED, 1, 0);
    CHECK(skv_seq_create(c, &s));
    fill(c, s, 1, 1, 30, 0, 1);
    CHECK(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, 0.125f, SKV_F32, out));
    export_to(c, s, "observed", 1);
    skv_cache_destroy(c);

    c = make(ctx, 1, 1, SKV_SCORER_SNAPKV, 1, 0);
    CHECK(skv_seq_create(c, &s));
    fill(c, s, 1, 1, 30, 0, 1);
    int32_t wpos[2] = {28, 29};
    CHECK(skv_seq_observe_window(c, s, 0, 2, SKV_F32, q, wpos));
    export_to(c, s, "snapkv", 0);
    skv_cache_destroy(c);

    skv_context_destroy(ctx);
    return 0;
}
