/* `skv demo`: streams a long synthetic context (tools/synth.c) through a dense F16 cache
 * and a compressed one side by side, then decodes against both and prints what each
 * costs and how close each comes to exact attention, needles included. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "skv_ref.h"
#include "skv_tool.h"
#include "synth.h"

void usage_demo(FILE *out)
{
    fprintf(out,
            "usage: skv demo [--tokens N] [--policy TIER | --budget F] [--device SEL]\n"
            "  Streams N tokens (default 32768) of a synthetic model (4 layers, 4 kv-heads,\n"
            "  16 q-heads, head_dim 128, RoPE keys with a mean and outlier channels, attention\n"
            "  sinks, 4 planted needles) into a dense F16 cache and a compressed one, then\n"
            "  decodes against both: memory, decode time, error vs exact attention, needles.\n"
            "  --policy TIER  a4v8, a3v4 (default) or a2v2: every token but the 4 sinks' page\n"
            "                 and the last 128 tokens in that ADA tier; f16 compresses nothing\n"
            "  --budget F     RDR instead: every (layer, kv-head) within F of its F16 bytes,\n"
            "                 per token F16, a4v8, a3v4, a2v2 or drop, by manifold scores\n"
            "  --device SEL   device selector (default: SKV_DEVICE, else GPU, else CPU)\n");
}


/* Mean over q-heads of cos(out_head, needle value of its kv-head). */
static double needle_cos(const synth_model *m, uint32_t layer, int n, const float *out)
{
    const uint32_t d = m->head_dim, G = m->q_heads / m->kv_heads;
    const size_t per = (size_t)m->layers * m->kv_heads * d;
    double sum = 0;
    for (uint32_t qh = 0; qh < m->q_heads; qh++) {
        const float *o = out + (size_t)qh * d, *v = m->nvalue + n * per + ((size_t)layer * m->kv_heads + qh / G) * d;
        double dot = 0, no = 0, nv = 0;
        for (uint32_t i = 0; i < d; i++) {
            dot += (double)o[i] * v[i];
            no += (double)o[i] * o[i];
            nv += (double)v[i] * v[i];
        }
        sum += dot / sqrt(no * nv + 1e-30);
    }
    return sum / m->q_heads;
}

#define CHECK(call) TOOL_CHECK("demo", done, call)

int cmd_demo(int argc, char **argv)
{
    uint64_t tokens = 32768;
    int tier = SKV_TIER_A3V4;
    double budget = -1;
    const char *device = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return tool_usage_error(usage_demo, "demo: '%s' needs a value or is unknown", a);
        char *end;
        errno = 0;
        if (strcmp(a, "--tokens") == 0) {
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || *end || n < 1024 || n > (1ull << 24))
                return tool_usage_error(usage_demo, "demo: --tokens must be in 1024..16777216");
            tokens = n;
        } else if (strcmp(a, "--policy") == 0) {
            tier = tool_tier_index(v, strlen(v));
            if (tier < 0)
                return tool_usage_error(usage_demo, "demo: --policy must be f16, a4v8, a3v4 or a2v2");
        } else if (strcmp(a, "--budget") == 0) {
            budget = strtod(v, &end);
            if (errno || *end || !(budget > 0 && budget <= 1))
                return tool_usage_error(usage_demo, "demo: --budget must be a fraction in (0, 1]");
        } else if (strcmp(a, "--device") == 0) {
            device = v;
        } else {
            return tool_usage_error(usage_demo, "demo: unknown option '%s'", a);
        }
        i++;
    }

    const uint32_t L = 4, H = 4, QH = 16, D = 128, P = 64, W = 128, chunk = 2048, eval_layer = L - 1;
    int rc = 1;
    synth_model m;
    skv_context *ctx = NULL;
    skv_cache *dense = NULL, *comp = NULL;
    float *k = NULL, *v = NULL, *ek = NULL, *ev = NULL;
    int32_t *pos = NULL;
    if (synth_init(&m, L, H, QH, D, tokens, 4, 0, 2026) != 0) {
        fprintf(stderr, "skv demo: out of memory\n");
        return 1;
    }
    skv_device_profile prof;
    if (tool_open_context("demo", device, 1, &ctx, &prof) != SKV_OK)
        goto done;

    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    uint64_t pages = (tokens + W + P - 1) / P + 2;
    d.device_budget_bytes = pages * L * H * P * (4ull * D + 4) + (16u << 20);
    CHECK(skv_cache_create(ctx, &d, &dense));
    uint64_t f16_page;
    CHECK(skv_cache_page_bytes(dense, SKV_TIER_F16, &f16_page));
    if (budget > 0) { /* RDR: the solver picks each token's tier (or drop) under the budget */
        d.tiers = 0xF;
        d.scorer = SKV_SCORER_MANIFOLD;
        d.retention = SKV_RETENTION_RDR;
        d.budget_ratio = (float)budget;
        d.recent_window = W;
        d.slack = 1u << 30; /* compress once, after streaming, as the quantising policies do */
    } else {
        d.tiers = (1u << SKV_TIER_F16) | (1u << tier);
    }
    d.device_budget_bytes *= 2; /* F16 pages and their compressed copies coexist while compressing */
    CHECK(skv_cache_create(ctx, &d, &comp));
    char policy[64];
    if (budget > 0)
        snprintf(policy, sizeof policy, "rdr at %.3g of f16 (manifold)", budget);
    else
        snprintf(policy, sizeof policy, "%s", tool_tier_names[tier]);

    printf("skv demo — %s (%s)\n", prof.name, prof.platform);
    printf("model: %u layers, %u kv-heads, %u q-heads, head_dim %u; %llu tokens, %u needles; policy %s\n\n", L, H, QH,
           D, (unsigned long long)tokens, m.n_needles, policy);

    /* Stream the context into both caches (the evaluated layer's K/V kept for the exact reference). */
    skv_seq_id sd, sc;
    CHECK(skv_seq_create(dense, &sd));
    CHECK(skv_seq_create(comp, &sc));
    size_t row = (size_t)H * D;
    k = malloc(chunk * row * 4), v = malloc(chunk * row * 4), pos = malloc(chunk * 4);
    ek = malloc(tokens * row * 4), ev = malloc(tokens * row * 4);
    if (!k || !v || !pos || !ek || !ev) {
        fprintf(stderr, "skv demo: out of memory\n");
        goto done;
    }
    for (uint64_t t0 = 0; t0 < tokens; t0 += chunk) {
        uint32_t n = tokens - t0 < chunk ? (uint32_t)(tokens - t0) : chunk;
        for (uint32_t j = 0; j < n; j++)
            pos[j] = (int32_t)(t0 + j);
        for (uint32_t l = 0; l < L; l++) {
            synth_kv(&m, l, t0, n, k, v);
            CHECK(skv_append(dense, sd, l, n, SKV_F32, k, v, pos));
            CHECK(skv_append(comp, sc, l, n, SKV_F32, k, v, pos));
            if (l == eval_layer) {
                memcpy(ek + t0 * row, k, n * row * 4);
                memcpy(ev + t0 * row, v, n * row * 4);
            }
        }
        tool_progress("streaming %llu / %llu tokens", (unsigned long long)(t0 + n), (unsigned long long)tokens);
    }
    /* Compress all but the sinks' page and the recent window (RDR: under the budget). */
    if (budget > 0)
        CHECK(skv_compress(comp, sc));
    else if (tier != SKV_TIER_F16)
        CHECK(skv_seq_quantize(comp, sc, P, tokens - W, (skv_tier)tier));
    CHECK(skv_context_finish(ctx));

    /* Decode: ordinary queries, then one aimed at each needle. */
    const float scale = 1.0f / sqrtf((float)D);
    const int n_plain = 8;
    float *q = malloc(QH * D * 4), *od = malloc(QH * D * 4), *oc = malloc(QH * D * 4);
    double *ref = malloc(QH * D * sizeof *ref);
    double err_d = 0, err_c = 0, ms_d = 0, ms_c = 0;
    int found_d = 0, found_c = 0, found_ref = 0;
    if (!q || !od || !oc || !ref) {
        free(q), free(od), free(oc), free(ref);
        fprintf(stderr, "skv demo: out of memory\n");
        goto done;
    }
    for (int s = 0; s < n_plain + (int)m.n_needles; s++) {
        int needle = s < n_plain ? -1 : s - n_plain;
        tool_progress("decoding %d / %d", s + 1, n_plain + (int)m.n_needles);
        for (uint32_t l = 0; l < L; l++) { /* a full decode step: every layer, both caches */
            synth_query(&m, l, tokens, needle, (uint64_t)s, q);
            double t_d, t_c;
            skv_status st = skv_attention_decode(dense, l, &sd, 1, SKV_F32, q, scale, SKV_F32, od);
            if (st == SKV_OK)
                st = skv_cache_last_decode_ms(dense, &t_d);
            if (st == SKV_OK)
                st = skv_attention_decode(comp, l, &sc, 1, SKV_F32, q, scale, SKV_F32, oc);
            if (st == SKV_OK)
                st = skv_cache_last_decode_ms(comp, &t_c);
            if (st != SKV_OK) {
                fprintf(stderr, "\nskv demo: %s: %s\n", skv_status_str(st), skv_last_error());
                free(q), free(od), free(oc), free(ref);
                goto done;
            }
            ms_d += t_d;
            ms_c += t_c;
            if (l != eval_layer)
                continue;
            skv_ref_attention_decode(q, ek, ev, tokens, QH, H, D, scale, ref);
            if (needle < 0) {
                err_d += skv_ref_rel_l2(ref, od, QH * D) / n_plain;
                err_c += skv_ref_rel_l2(ref, oc, QH * D) / n_plain;
            } else {
                float rf[16 * 128];
                for (uint32_t i = 0; i < QH * D; i++)
                    rf[i] = (float)ref[i];
                found_ref += needle_cos(&m, l, needle, rf) >= 0.9;
                found_d += needle_cos(&m, l, needle, od) >= 0.9;
                found_c += needle_cos(&m, l, needle, oc) >= 0.9;
            }
        }
    }
    free(q), free(od), free(oc), free(ref);
    tool_progress("");

    skv_cache_stats s_d = {.struct_size = sizeof s_d}, s_c = {.struct_size = sizeof s_c};
    CHECK(skv_cache_get_stats(dense, &s_d));
    CHECK(skv_cache_get_stats(comp, &s_c));
    uint64_t bytes_d = s_d.pools[SKV_TIER_F16][SKV_MEM_DEVICE].bytes_used;
    uint64_t bytes_c = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        bytes_c += s_c.pools[t][SKV_MEM_DEVICE].bytes_used;
    int steps = n_plain + (int)m.n_needles;
    printf("                        dense (f16)     compressed (%s)\n", budget > 0 ? "rdr" : tool_tier_names[tier]);
    printf("KV bytes on device      %10.1f MiB   %10.1f MiB  (%.2fx smaller)\n", bytes_d / 1048576.0,
           bytes_c / 1048576.0, (double)bytes_d / (double)bytes_c);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (s_c.pools[t][SKV_MEM_DEVICE].pages_used)
            printf("  in %-5s                              %10.1f MiB\n", tool_tier_names[t],
                   s_c.pools[t][SKV_MEM_DEVICE].bytes_used / 1048576.0);
    printf("decode step (%u layers) %10.2f ms    %10.2f ms   (%.2fx)\n", L, ms_d / steps, ms_c / steps, ms_d / ms_c);
    printf("output error vs exact   %10.2e      %10.2e     (relative L2, layer %u, %d queries)\n", err_d, err_c,
           eval_layer, n_plain);
    printf("needles retrieved       %7d / %u       %7d / %u     (exact attention: %d / %u)\n", found_d, m.n_needles,
           found_c, m.n_needles, found_ref, m.n_needles);
    rc = 0;
done:
    free(k), free(v), free(pos), free(ek), free(ev);
    skv_cache_destroy(comp);
    skv_cache_destroy(dense);
    skv_context_destroy(ctx);
    synth_free(&m);
    return rc;
}
