/* `skv bench`: performance measurements, never pass/fail. `decode` times decode
 * attention per tier and context length against the device's measured read bandwidth. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "skv_tool.h"
#include "svg.h"

void usage_bench(FILE *out)
{
    fprintf(out,
            "usage: skv bench decode [options]\n"
            "  Times decode attention (OpenCL profiling events, 1 warm-up, median of --runs)\n"
            "  after measuring the device's streaming-read bandwidth with skv's own kernel\n"
            "  (on CPU devices also with a host read loop; the higher is the ceiling).\n"
            "  time_ms is the kernels' span; call_ms the call's wall clock (median, a blocking\n"
            "  host call: upload, kernels, read-back); host = (call - kernels) / call; objs the\n"
            "  OpenCL objects a timed call created (0 after warm-up).\n"
            "  --tokens N[,N...]  context lengths (default 4096,16384,65536)\n"
            "  --kv-heads N       default 8\n"
            "  --q-heads N        default 32\n"
            "  --head-dim N       64, 128 or 256 (default 128)\n"
            "  --batch N          sequences per decode call, each of --tokens (default 1)\n"
            "  --page-tokens N    default 64\n"
            "  --tiers LIST       tiers to time, e.g. f16,a4v8,a3v4,a2v2 (default f16); an\n"
            "                     ADA tier holds every full page, the partial last page stays f16\n"
            "  --runs N           timed runs per point, >= 20 (default 20)\n"
            "  --variant LIST     decode variants to time side by side at every point (default:\n"
            "                     default, the tuning database's choice): default, builtin\n"
            "                     (the built-in entry, what an untuned device gets), lanes16,\n"
            "                     lanes8, lanes4, group, each optionally with /tile=N, /chunks=N\n"
            "                     (per compute unit), /f16=N (F16 slots per key pass), e.g.\n"
            "                     default,lanes8,lanes8/chunks=8,group/tile=128\n"
            "  --device SEL       device selector (default: SKV_DEVICE, else GPU, else CPU)\n"
            "  --json FILE        write the results as JSON ('-' for stdout)\n"
            "  --svg FILE         chart time and bandwidth fraction vs context length per tier\n"
            "                     (the first variant)\n"
            "\n"
            "usage: skv bench compress [--tokens N] [--kv-heads N] [--head-dim N] [--budget F]\n"
            "                          [--runs N] [--device SEL] [--json FILE]\n"
            "  Times skv_compress (score + solve + pack, RDR with keydiff over F16 and all ADA\n"
            "  tiers, budget F of F16, default 0.125): once over a whole filled sequence (default\n"
            "  65536 tokens, 8 kv-heads, head_dim 128), then in the steady state (128 tokens\n"
            "  appended to a fork of it; median of --runs, default 5), and the decode step it\n"
            "  serves: compressing every 128 tokens costs compress_ms / 128 per step, reported\n"
            "  as a fraction of the decode step.\n"
            "\n"
            "usage: skv bench hetero [--tokens N[,N...]] [--kv-heads N] [--q-heads N] [--head-dim N]\n"
            "                        [--fetch F] [--runs N] [--device SEL] [--json FILE]\n"
            "  The host-memory tier HeteroCache keeps full KV in: two sequences of N tokens\n"
            "  (default 16384,65536; 8 kv-heads, 32 q-heads, head_dim 128, F16). Times (wall\n"
            "  clock, median of --runs, default 20) moving the first F of one sequence's tokens\n"
            "  (default 0.25) to host memory and back (GB/s), one decode step of the other\n"
            "  sequence alone, and the fetch and that decode enqueued together: overlap =\n"
            "  (fetch + decode - together) / min(fetch, decode), 1 when the shorter hides\n"
            "  entirely behind the longer, 0 when they serialise; fetch_steps = the fetch in\n"
            "  decode steps. Then HeteroCache with retrieval active (one pivot, the other\n"
            "  kv-heads its satellites, 1/4 of F16; the query switches every 10 steps so the\n"
            "  pivot drifts) against a static RDR cache of the same device bytes: the median\n"
            "  decode step of each (10 * runs steps, interleaved), its ratio, device bytes\n"
            "  over F16 of each, host bytes, retrievals and tokens fetched.\n");
}

typedef struct bench_opts {
    uint64_t tokens[32];
    int n_tokens;
    int tiers[SKV_TIER_COUNT];
    int n_tiers;
    uint32_t kv_heads, q_heads, head_dim, batch, page_tokens, runs;
    const char *device, *json, *svg;
    skv_decode_params variants[16]; /* bench decode --variant */
    int variant_default[16];
    int n_variants;
} bench_opts;

static int parse_variants(const char *s, bench_opts *o)
{
    o->n_variants = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (o->n_variants == 16 ||
            tool_variant_parse(s, len, &o->variants[o->n_variants], &o->variant_default[o->n_variants]) != 0)
            return -1;
        o->n_variants++;
        s += len + (s[len] == ',');
    }
    return o->n_variants ? 0 : -1;
}

static int parse_tokens(const char *s, bench_opts *o)
{
    o->n_tokens = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || v == 0 || v > (1ull << 30) || o->n_tokens == 32)
            return -1;
        o->tokens[o->n_tokens++] = v;
        if (*end == ',')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return o->n_tokens ? 0 : -1;
}

static int parse_tiers(const char *s, bench_opts *o)
{
    o->n_tiers = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        int found = tool_tier_index(s, len);
        if (found < 0 || o->n_tiers == SKV_TIER_COUNT)
            return -1;
        o->tiers[o->n_tiers++] = found;
        s += len + (s[len] == ',');
    }
    return o->n_tiers ? 0 : -1;
}

/* Plain host read loop over `bytes`: median GB/s of 5 passes. */
static double host_read_gbps(size_t bytes)
{
    size_t n = bytes / 8;
    uint64_t *buf = malloc(n * 8);
    if (!buf)
        return 0;
    for (size_t i = 0; i < n; i++)
        buf[i] = i * 0x9E3779B97F4A7C15ull;
    double t[5];
    volatile uint64_t sink = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = tool_now_s();
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t i = 0; i + 4 <= n; i += 4) {
            a ^= buf[i];
            b ^= buf[i + 1];
            c ^= buf[i + 2];
            d ^= buf[i + 3];
        }
        sink ^= a ^ b ^ c ^ d;
        t[r] = tool_now_s() - t0;
    }
    (void)sink;
    free(buf);
    qsort(t, 5, sizeof t[0], tool_cmp_double);
    return (double)(n * 8) / t[2] * 1e-9;
}


/* The options bench decode and bench hetero share: 1 when `a` is one of them (*bad set
 * when its value is not valid), 0 when it is not. */
static int shared_option(const char *a, const char *v, bench_opts *o, int *bad)
{
    if (strcmp(a, "--tokens") == 0)
        *bad = parse_tokens(v, o);
    else if (strcmp(a, "--kv-heads") == 0)
        *bad = tool_parse_u32(v, 1, 1024, &o->kv_heads);
    else if (strcmp(a, "--q-heads") == 0)
        *bad = tool_parse_u32(v, 1, 65536, &o->q_heads);
    else if (strcmp(a, "--head-dim") == 0)
        *bad = tool_parse_u32(v, 1, 1024, &o->head_dim);
    else if (strcmp(a, "--device") == 0)
        o->device = v;
    else if (strcmp(a, "--json") == 0)
        o->json = v;
    else
        return 0;
    return 1;
}

#define CHECK(call) TOOL_CHECK("bench", fail, call)

/* One point: a cache with `batch` sequences of `tokens` tokens; median decode time of
 * each variant, side by side. */
static int bench_decode_point(skv_context *ctx, const bench_opts *o, int tier, uint64_t tokens, cJSON *results,
                              double read_gbps)
{
    int rc = 1;
    skv_cache *cache = NULL;
    skv_seq_id *seqs = calloc(o->batch, sizeof *seqs);
    const uint32_t chunk = 2048;
    size_t row = (size_t)o->kv_heads * o->head_dim;
    uint16_t *kv = malloc((size_t)chunk * row * 2);
    int32_t *pos = malloc(chunk * sizeof *pos);
    size_t qn = (size_t)o->batch * o->q_heads * o->head_dim;
    float *q = malloc(qn * 4), *out = malloc(qn * 4);
    double *times = calloc(o->runs, sizeof *times), *calls = calloc(o->runs, sizeof *calls);
    if (!seqs || !kv || !pos || !q || !out || !times || !calls) {
        fprintf(stderr, "\nskv bench: out of memory\n");
        goto fail;
    }
    uint64_t state = 88172645463325252ull;
    for (size_t i = 0; i < (size_t)chunk * row; i++) { /* fp16 values of either sign in [0.125, 0.25) */
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        kv[i] = (uint16_t)(0x3000u | (state & 0x83FFu));
    }
    for (size_t i = 0; i < qn; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;

    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1;
    d.q_heads = o->q_heads;
    d.kv_heads = o->kv_heads;
    d.head_dim = o->head_dim;
    d.page_tokens = o->page_tokens;
    d.tiers = (1u << SKV_TIER_F16) | (1u << tier);
    uint64_t pages = (tokens + o->page_tokens - 1) / o->page_tokens * o->kv_heads * o->batch;
    /* room for every page in F16 (filled first) plus the tier's copy made from it */
    d.device_budget_bytes = (2 * pages + 8 * 8) * ((uint64_t)o->page_tokens * (4 * o->head_dim + 4));
    CHECK(skv_cache_create(ctx, &d, &cache));
    uint64_t f16_page, tier_page;
    CHECK(skv_cache_page_bytes(cache, SKV_TIER_F16, &f16_page));
    CHECK(skv_cache_page_bytes(cache, (skv_tier)tier, &tier_page));
    for (uint32_t b = 0; b < o->batch; b++) {
        CHECK(skv_seq_create(cache, &seqs[b]));
        for (uint64_t t = 0; t < tokens; t += chunk) {
            uint32_t n = tokens - t < chunk ? (uint32_t)(tokens - t) : chunk;
            for (uint32_t i = 0; i < n; i++)
                pos[i] = (int32_t)(t + i);
            CHECK(skv_append(cache, seqs[b], 0, n, SKV_F16, kv, kv, pos));
            if ((t / chunk) % 16 == 0)
                tool_progress("bench decode %s %llu tokens: filling %3.0f%%", tool_tier_names[tier], (unsigned long long)tokens,
                         100.0 * (double)(b * tokens + t) / (double)(o->batch * tokens));
        }
        if (tier != SKV_TIER_F16)
            CHECK(skv_seq_quantize(cache, seqs[b], 0, tokens, (skv_tier)tier));
    }
    float scale = 1.0f / sqrtf((float)o->head_dim);
    for (int v = 0; v < o->n_variants; v++) {
        skv_tuning_info info = {.struct_size = sizeof info};
        CHECK(skv_context_tuning(ctx, (skv_tier)tier, o->head_dim, o->q_heads / o->kv_heads, &info));
        const skv_decode_params *want = o->variant_default[v] == 1   ? NULL
                                        : o->variant_default[v] == 2 ? &info.builtin
                                                                     : &o->variants[v];
        CHECK(skv_cache_set_decode_params(cache, want));
        skv_decode_params used;
        char name[96];
        CHECK(skv_cache_decode_params(cache, (skv_tier)tier, &used));
        tool_variant_name(&used, tier, name, sizeof name);
        skv_cache_stats st0 = {.struct_size = sizeof st0}, st1 = {.struct_size = sizeof st1};
        for (uint32_t r = 0; r <= o->runs; r++) { /* run 0 is the warm-up */
            if (r == 1)
                CHECK(skv_cache_get_stats(cache, &st0));
            double t0 = tool_now_s();
            CHECK(skv_attention_decode(cache, 0, seqs, o->batch, SKV_F32, q, scale, SKV_F32, out));
            double call = (tool_now_s() - t0) * 1e3, ms;
            CHECK(skv_cache_last_decode_ms(cache, &ms));
            if (r > 0) {
                times[r - 1] = ms;
                calls[r - 1] = call;
            }
            tool_progress("bench decode %s %llu tokens %s: run %u/%u", tool_tier_names[tier], (unsigned long long)tokens,
                          name, r, o->runs);
        }
        CHECK(skv_cache_get_stats(cache, &st1));
        double objects = (double)(st1.decode_cl_objects - st0.decode_cl_objects) / o->runs;
        /* host time of a call: the call's wall clock less its kernels' span (both medians) */
        qsort(times, o->runs, sizeof *times, tool_cmp_double);
        qsort(calls, o->runs, sizeof *calls, tool_cmp_double);
        double ms = times[o->runs / 2], call_ms = calls[o->runs / 2];
        double host_frac = call_ms > ms ? (call_ms - ms) / call_ms : 0;
        /* Bytes decode must read: every token's key and value codes, per kv-head and sequence
         * (full pages in the tier, the partial last page in F16; positions are not read). */
        uint64_t in_tier = tier == SKV_TIER_F16 ? tokens : tokens / o->page_tokens * o->page_tokens;
        double per_token_tier = (double)tier_page / o->page_tokens - 4,
               per_token_f16 = (double)f16_page / o->page_tokens - 4;
        double bytes = (double)o->batch * o->kv_heads *
                       ((double)in_tier * per_token_tier + (double)(tokens - in_tier) * per_token_f16);
        double gbps = bytes / (ms * 1e-3) * 1e-9;
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "tier", tool_tier_names[tier]);
        cJSON_AddNumberToObject(r, "tokens", (double)tokens);
        cJSON_AddStringToObject(r, "variant", name);
        cJSON_AddStringToObject(r, "variant_source", o->variant_default[v] == 1   ? "default"
                                                     : o->variant_default[v] == 2 ? "builtin"
                                                                                  : "named");
        cJSON_AddItemToObject(r, "params", tool_variant_json(&used));
        cJSON_AddNumberToObject(r, "time_ms", ms);
        cJSON_AddNumberToObject(r, "call_ms", call_ms);
        cJSON_AddNumberToObject(r, "host_fraction", host_frac);
        cJSON_AddNumberToObject(r, "cl_objects_per_step", objects);
        cJSON_AddNumberToObject(r, "bytes_read", bytes);
        cJSON_AddNumberToObject(r, "gbps", gbps);
        cJSON_AddNumberToObject(r, "bw_fraction", gbps / read_gbps);
        cJSON_AddItemToArray(results, r);
        tool_progress("");
        printf("%-5s %9llu  %10.3f  %8.3f  %5.1f%%  %5.1f  %12.0f  %8.1f  %6.2f  %s%s\n", tool_tier_names[tier],
               (unsigned long long)tokens, ms, call_ms, 100 * host_frac, objects, bytes, gbps, gbps / read_gbps,
               o->variant_default[v] == 1   ? "default: "
               : o->variant_default[v] == 2 ? "builtin: "
                                            : "",
               name);
    }
    rc = 0;
fail:
    skv_cache_destroy(cache);
    free(seqs);
    free(kv);
    free(pos);
    free(q);
    free(out);
    free(times);
    free(calls);
    return rc;
}

static int bench_decode(int argc, char **argv)
{
    bench_opts o = {.n_tokens = 3, .tokens = {4096, 16384, 65536}, .n_tiers = 1, .tiers = {SKV_TIER_F16},
                    .kv_heads = 8, .q_heads = 32, .head_dim = 128, .batch = 1, .page_tokens = 64, .runs = 20,
                    .n_variants = 1, .variant_default = {1}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v)
            return tool_usage_error(usage_bench, "bench decode: '%s' needs a value or is unknown", a);
        if (shared_option(a, v, &o, &bad)) {
            /* parsed */
        } else if (strcmp(a, "--batch") == 0)
            bad = tool_parse_u32(v, 1, 4096, &o.batch);
        else if (strcmp(a, "--page-tokens") == 0)
            bad = tool_parse_u32(v, 1, 4096, &o.page_tokens);
        else if (strcmp(a, "--runs") == 0)
            bad = tool_parse_u32(v, 20, 100000, &o.runs);
        else if (strcmp(a, "--tiers") == 0)
            bad = parse_tiers(v, &o);
        else if (strcmp(a, "--svg") == 0)
            o.svg = v;
        else if (strcmp(a, "--variant") == 0)
            bad = parse_variants(v, &o);
        else
            return tool_usage_error(usage_bench, "bench decode: unknown option '%s'", a);
        if (bad)
            return tool_usage_error(usage_bench, "bench decode: bad value '%s' for %s", v, a);
        i++;
    }

    skv_context *ctx = NULL;
    skv_device_profile prof;
    skv_status st = tool_open_context("bench", o.device, 1, &ctx, &prof);
    if (st != SKV_OK) {
        skv_context_destroy(ctx);
        return 1;
    }
    tool_progress("bench: measuring read bandwidth");
    uint64_t probe = prof.is_gpu ? (1ull << 30) : (256ull << 20);
    double kernel_gbps = 0, host_gbps = 0;
    st = skv_measure_read_bandwidth(ctx, probe, 20, &kernel_gbps);
    if (st != SKV_OK) {
        fprintf(stderr, "\nskv bench: %s: %s\n", skv_status_str(st), skv_last_error());
        skv_context_destroy(ctx);
        return 1;
    }
    if (prof.vendor_class == SKV_VENDOR_CPU)
        host_gbps = host_read_gbps((size_t)probe);
    double read_gbps = kernel_gbps > host_gbps ? kernel_gbps : host_gbps;
    tool_progress("");
    printf("device: %s (%s)\nread bandwidth: %.1f GB/s (kernel %.1f", prof.name, prof.platform, read_gbps, kernel_gbps);
    if (host_gbps > 0)
        printf(", host loop %.1f", host_gbps);
    printf(")\ndecode: batch %u, %u q-heads, %u kv-heads, head_dim %u, page %u tokens, median of %u runs\n\n", o.batch,
           o.q_heads, o.kv_heads, o.head_dim, o.page_tokens, o.runs);
    printf("tier     tokens     time_ms   call_ms   host  objs    bytes_read      GB/s  bw_frac  variant\n");

    cJSON *root = cJSON_CreateObject();
    char dev[2 * SKV_NAME_MAX + 8];
    snprintf(dev, sizeof dev, "%s (%s)", prof.name, prof.platform);
    cJSON_AddStringToObject(root, "device", dev);
    cJSON_AddStringToObject(root, "version", skv_version_string());
    cJSON_AddNumberToObject(root, "read_gbps", read_gbps);
    cJSON_AddNumberToObject(root, "read_gbps_kernel", kernel_gbps);
    if (host_gbps > 0)
        cJSON_AddNumberToObject(root, "read_gbps_host_loop", host_gbps);
    cJSON *results = cJSON_AddArrayToObject(root, "results");
    int rc = 0;
    for (int t = 0; t < o.n_tiers && rc == 0; t++)
        for (int i = 0; i < o.n_tokens && rc == 0; i++)
            rc = bench_decode_point(ctx, &o, o.tiers[t], o.tokens[i], results, read_gbps);
    if (rc == 0 && o.json) {
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(o.json, text) != 0) {
            fprintf(stderr, "skv bench: cannot write %s\n", o.json);
            rc = 1;
        }
        free(text);
    }
    if (rc == 0 && o.svg) { /* a line per tier: time and bandwidth fraction vs tokens */
        double x[SKV_TIER_COUNT][32], tm[SKV_TIER_COUNT][32], bw[SKV_TIER_COUNT][32];
        svg_series ts[SKV_TIER_COUNT], bs[SKV_TIER_COUNT];
        const cJSON *r;
        int k = 0;
        for (int t = 0; t < o.n_tiers; t++) {
            for (int i = 0; i < o.n_tokens; i++, k += o.n_variants) {
                r = cJSON_GetArrayItem(results, k);
                x[t][i] = cJSON_GetObjectItem(r, "tokens")->valuedouble;
                tm[t][i] = cJSON_GetObjectItem(r, "time_ms")->valuedouble;
                bw[t][i] = cJSON_GetObjectItem(r, "bw_fraction")->valuedouble;
            }
            ts[t] = (svg_series){tool_tier_names[o.tiers[t]], x[t], tm[t], (size_t)o.n_tokens, o.tiers[t], 0};
            bs[t] = (svg_series){tool_tier_names[o.tiers[t]], x[t], bw[t], (size_t)o.n_tokens, o.tiers[t], 0};
        }
        svg_panel panels[2] = {{"decode step time", "context tokens", "ms", 1, 1, ts, (size_t)o.n_tiers},
                               {"fraction of read bandwidth", "context tokens", "GB/s / ceiling", 1, 0, bs,
                                (size_t)o.n_tiers}};
        char heading[2 * SKV_NAME_MAX + 64];
        snprintf(heading, sizeof heading, "skv bench decode %s, %s, read ceiling %.1f GB/s", skv_version_string(), dev,
                 read_gbps);
        char *text = svg_chart(heading, panels, 2);
        if (!text || tool_write_file(o.svg, text) != 0) {
            fprintf(stderr, "skv bench: cannot write %s\n", o.svg);
            rc = 1;
        }
        free(text);
    }
    cJSON_Delete(root);
    skv_context_destroy(ctx);
    return rc;
}

static double wall_ms(void) { return tool_now_s() * 1e3; }

static int bench_compress(int argc, char **argv)
{
    uint64_t tokens = 65536;
    uint32_t kv = 8, d = 128, runs = 5;
    double budget = 0.125;
    const char *device = NULL, *json = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v)
            return tool_usage_error(usage_bench, "bench compress: '%s' needs a value or is unknown", a);
        uint32_t t32 = 0;
        if (strcmp(a, "--tokens") == 0)
            bad = tool_parse_u32(v, 1024, 1u << 24, &t32), tokens = t32;
        else if (strcmp(a, "--kv-heads") == 0)
            bad = tool_parse_u32(v, 1, 1024, &kv);
        else if (strcmp(a, "--head-dim") == 0)
            bad = tool_parse_u32(v, 64, 256, &d);
        else if (strcmp(a, "--runs") == 0)
            bad = tool_parse_u32(v, 1, 1000, &runs);
        else if (strcmp(a, "--budget") == 0) {
            char *end;
            budget = strtod(v, &end);
            bad = *end || !(budget > 0 && budget <= 1);
        } else if (strcmp(a, "--device") == 0)
            device = v;
        else if (strcmp(a, "--json") == 0)
            json = v;
        else
            return tool_usage_error(usage_bench, "bench compress: unknown option '%s'", a);
        if (bad)
            return tool_usage_error(usage_bench, "bench compress: bad value '%s' for %s", v, a);
        i++;
    }
    int rc = 1;
    skv_context *ctx = NULL;
    skv_cache *cache = NULL;
    uint16_t *kvbuf = NULL;
    int32_t *pos = NULL;
    float *q = NULL, *out = NULL;
    double *times = calloc(runs, sizeof *times), *dec = calloc(runs, sizeof *dec);
    skv_device_profile prof;
    if (tool_open_context("bench", device, 1, &ctx, &prof) != SKV_OK)
        goto fail;
    skv_cache_desc desc;
    skv_cache_desc_init(&desc);
    desc.layers = 1, desc.q_heads = 4 * kv, desc.kv_heads = kv, desc.head_dim = d, desc.page_tokens = 64;
    desc.tiers = 0xF;
    desc.scorer = SKV_SCORER_KEYDIFF;
    desc.retention = SKV_RETENTION_RDR;
    desc.budget_ratio = (float)budget;
    desc.slack = 1u << 30;
    desc.device_budget_bytes = 3 * ((tokens + 63) / 64 + 2) * kv * 64 * (4ull * d + 4);
    CHECK(skv_cache_create(ctx, &desc, &cache));
    const uint32_t chunk = 2048;
    kvbuf = malloc((size_t)chunk * kv * d * 2);
    pos = malloc(chunk * 4);
    q = malloc((size_t)4 * kv * d * 4), out = malloc((size_t)4 * kv * d * 4);
    if (!kvbuf || !pos || !q || !out || !times || !dec) {
        fprintf(stderr, "skv bench: out of memory\n");
        goto fail;
    }
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < (size_t)4 * kv * d; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    skv_seq_id base;
    CHECK(skv_seq_create(cache, &base));
    for (uint64_t t = 0; t < tokens; t += chunk) {
        uint32_t n = tokens - t < chunk ? (uint32_t)(tokens - t) : chunk;
        for (size_t i = 0; i < (size_t)chunk * kv * d; i++) { /* fresh keys and values for every chunk */
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            kvbuf[i] = (uint16_t)(0x3400u | (state & 0x83FFu)); /* fp16 in [0.25, 0.5) of either sign */
        }
        for (uint32_t i = 0; i < n; i++)
            pos[i] = (int32_t)(t + i);
        CHECK(skv_append(cache, base, 0, n, SKV_F16, kvbuf, kvbuf, pos));
        tool_progress("bench compress: filling %3.0f%%", 100.0 * (double)(t + n) / (double)tokens);
    }
    /* the first compression of the whole context (once), then the steady state: 128 new
     * tokens appended to a fork of the compressed sequence, compressed again */
    CHECK(skv_context_finish(ctx));
    skv_cache_stats w0 = {.struct_size = sizeof w0}, w1 = {.struct_size = sizeof w1};
    CHECK(skv_cache_get_stats(cache, &w0));
    double first0 = wall_ms();
    CHECK(skv_compress(cache, base));
    CHECK(skv_context_finish(ctx));
    double first_ms = wall_ms() - first0;
    CHECK(skv_cache_get_stats(cache, &w1));
    const double first_waits = (double)(w1.compress_host_waits - w0.compress_host_waits);
    double steady_waits = 0;
    for (uint32_t i = 0; i < 128; i++)
        pos[i] = (int32_t)(tokens + i);
    for (uint32_t r = 0; r <= runs; r++) { /* run 0 warms up */
        skv_seq_id s;
        CHECK(skv_seq_fork(cache, base, &s));
        CHECK(skv_append(cache, s, 0, 128, SKV_F16, kvbuf, kvbuf, pos));
        CHECK(skv_context_finish(ctx));
        CHECK(skv_cache_get_stats(cache, &w0));
        double t0 = wall_ms();
        CHECK(skv_compress(cache, s));
        CHECK(skv_context_finish(ctx));
        double t1 = wall_ms();
        CHECK(skv_cache_get_stats(cache, &w1));
        steady_waits = (double)(w1.compress_host_waits - w0.compress_host_waits);
        CHECK(skv_attention_decode(cache, 0, &s, 1, SKV_F32, q, 0.088f, SKV_F32, out));
        double ms;
        CHECK(skv_cache_last_decode_ms(cache, &ms));
        if (r > 0) {
            times[r - 1] = t1 - t0;
            dec[r - 1] = ms;
        }
        CHECK(skv_seq_free(cache, s));
        tool_progress("bench compress: run %u/%u", r, runs);
    }
    qsort(times, runs, sizeof *times, tool_cmp_double);
    qsort(dec, runs, sizeof *dec, tool_cmp_double);
    double ms = times[runs / 2], dms = dec[runs / 2], cand = (double)tokens * kv;
    tool_progress("");
    printf("device: %s (%s)\ncompress: %llu tokens x %u kv-heads (head_dim %u) to %.3g of F16, keydiff, median of %u\n\n",
           prof.name, prof.platform, (unsigned long long)tokens, kv, d, budget, runs);
    printf("first compress  %10.2f ms  (%.2f ms per 1M (token, head) candidates; %.0f host waits)\n", first_ms,
           first_ms / cand * 1e6, first_waits);
    printf("compress        %10.2f ms  (steady state: 128 new tokens; %.2f ms per 1M candidates; %.0f host waits)\n", ms,
           ms / cand * 1e6, steady_waits);
    printf("decode step     %10.3f ms  (the compressed sequence)\n", dms);
    printf("amortised       %10.2f%%    of the decode steps it serves (compress every 128 tokens)\n",
           100.0 * ms / 128.0 / dms);
    if (json) {
        cJSON *root = cJSON_CreateObject();
        char dev[2 * SKV_NAME_MAX + 8];
        snprintf(dev, sizeof dev, "%s (%s)", prof.name, prof.platform);
        cJSON_AddStringToObject(root, "device", dev);
        cJSON_AddStringToObject(root, "version", skv_version_string());
        cJSON_AddNumberToObject(root, "tokens", (double)tokens);
        cJSON_AddNumberToObject(root, "kv_heads", kv);
        cJSON_AddNumberToObject(root, "budget", budget);
        cJSON_AddNumberToObject(root, "first_compress_ms", first_ms);
        cJSON_AddNumberToObject(root, "compress_ms", ms);
        cJSON_AddNumberToObject(root, "first_compress_host_waits", first_waits);
        cJSON_AddNumberToObject(root, "compress_host_waits", steady_waits);
        cJSON_AddNumberToObject(root, "ms_per_million_candidates", ms / cand * 1e6);
        cJSON_AddNumberToObject(root, "decode_ms", dms);
        cJSON_AddNumberToObject(root, "amortised_fraction", ms / 128.0 / dms);
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(json, text) != 0) {
            fprintf(stderr, "skv bench: cannot write %s\n", json);
            free(text);
            cJSON_Delete(root);
            goto fail;
        }
        free(text);
        cJSON_Delete(root);
    }
    rc = 0;
fail:
    free(kvbuf), free(pos), free(q), free(out), free(times), free(dec);
    skv_cache_destroy(cache);
    skv_context_destroy(ctx);
    return rc;
}

/* One point of bench hetero: sequences `a` (decodes) and `b` (moves) of `tokens`. */
static int hetero_point(skv_context *ctx, const bench_opts *o, double fetch_fraction, uint64_t tokens, cJSON *results)
{
    const uint32_t H = o->kv_heads, QH = o->q_heads, D = o->head_dim, chunk = 2048;
    int rc = 1;
    skv_cache *cache = NULL;
    uint16_t *kvbuf = malloc((size_t)chunk * H * D * 2);
    int32_t *pos = malloc(chunk * 4);
    float *q = malloc((size_t)QH * D * 4), *out = malloc((size_t)QH * D * 4);
    double *t[5];
    for (int i = 0; i < 5; i++)
        t[i] = calloc(o->runs, sizeof(double));
    if (!kvbuf || !pos || !q || !out || !t[0] || !t[1] || !t[2] || !t[3] || !t[4]) {
        fprintf(stderr, "skv bench: out of memory\n");
        goto fail;
    }
    skv_cache_desc desc;
    skv_cache_desc_init(&desc);
    desc.layers = 1, desc.q_heads = QH, desc.kv_heads = H, desc.head_dim = D, desc.page_tokens = 64;
    const uint64_t seq_bytes = ((tokens + 63) / 64 + 1) * H * 64 * (4ull * D + 4);
    desc.device_budget_bytes = 3 * seq_bytes;
    desc.host_budget_bytes = seq_bytes;
    CHECK(skv_cache_create(ctx, &desc, &cache));
    uint64_t state = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < (size_t)chunk * H * D; i++) {
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        kvbuf[i] = (uint16_t)(0x3400u | (state & 0x83FFu)); /* fp16 in [0.25, 0.5) of either sign */
    }
    for (size_t i = 0; i < (size_t)QH * D; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    skv_seq_id a, b;
    CHECK(skv_seq_create(cache, &a));
    CHECK(skv_seq_create(cache, &b));
    for (uint64_t t0 = 0; t0 < tokens; t0 += chunk) {
        uint32_t n = tokens - t0 < chunk ? (uint32_t)(tokens - t0) : chunk;
        for (uint32_t i = 0; i < n; i++)
            pos[i] = (int32_t)(t0 + i);
        CHECK(skv_append(cache, a, 0, n, SKV_F16, kvbuf, kvbuf, pos));
        CHECK(skv_append(cache, b, 0, n, SKV_F16, kvbuf, kvbuf, pos));
    }
    const uint64_t moved = (uint64_t)(fetch_fraction * (double)tokens) / 64 * 64; /* whole pages */
    uint64_t page_bytes;
    CHECK(skv_cache_page_bytes(cache, SKV_TIER_F16, &page_bytes));
    const double bytes = (double)(moved / 64) * H * (double)page_bytes;
    const float scale = 1.0f / sqrtf((float)D);
    CHECK(skv_context_finish(ctx));
    for (uint32_t r = 0; r <= o->runs; r++) { /* run 0 warms up */
        double w[6];
        w[0] = wall_ms();
        CHECK(skv_seq_offload(cache, b, 0, moved));
        CHECK(skv_context_finish(ctx));
        w[1] = wall_ms();
        CHECK(skv_seq_fetch(cache, b, 0, moved));
        CHECK(skv_context_finish(ctx));
        w[2] = wall_ms();
        CHECK(skv_attention_decode(cache, 0, &a, 1, SKV_F32, q, scale, SKV_F32, out));
        CHECK(skv_context_finish(ctx));
        w[3] = wall_ms();
        CHECK(skv_seq_offload(cache, b, 0, moved));
        CHECK(skv_context_finish(ctx));
        w[4] = wall_ms();
        CHECK(skv_seq_fetch(cache, b, 0, moved)); /* on the transfer queue ... */
        CHECK(skv_attention_decode(cache, 0, &a, 1, SKV_F32, q, scale, SKV_F32, out)); /* ... with this */
        CHECK(skv_context_finish(ctx));
        w[5] = wall_ms();
        if (r > 0)
            for (int i = 0; i < 5; i++)
                t[i][r - 1] = w[i + 1] - w[i];
        tool_progress("bench hetero: %llu tokens, run %u/%u", (unsigned long long)tokens, r, o->runs);
    }
    for (int i = 0; i < 5; i++)
        qsort(t[i], o->runs, sizeof(double), tool_cmp_double);
    const double off = t[0][o->runs / 2], fet = t[1][o->runs / 2], dec = t[2][o->runs / 2],
                 both = t[4][o->runs / 2];
    const double overlap = (fet + dec - both) / (fet < dec ? fet : dec);
    tool_progress("");
    printf("%9llu %9llu %10.1f %8.2f %8.2f %8.2f %8.2f %9.3f %10.3f %8.2f %7.2f\n", (unsigned long long)tokens,
           (unsigned long long)moved, bytes / 1e6, off, bytes / off * 1e-6, fet, bytes / fet * 1e-6, dec, both, overlap,
           fet / dec);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "tokens", (double)tokens);
    cJSON_AddNumberToObject(r, "moved_tokens", (double)moved);
    cJSON_AddNumberToObject(r, "moved_bytes", bytes);
    cJSON_AddNumberToObject(r, "offload_ms", off);
    cJSON_AddNumberToObject(r, "offload_gbps", bytes / off * 1e-6);
    cJSON_AddNumberToObject(r, "fetch_ms", fet);
    cJSON_AddNumberToObject(r, "fetch_gbps", bytes / fet * 1e-6);
    cJSON_AddNumberToObject(r, "decode_ms", dec);
    cJSON_AddNumberToObject(r, "together_ms", both);
    cJSON_AddNumberToObject(r, "overlap", overlap);
    cJSON_AddNumberToObject(r, "fetch_steps", fet / dec);
    cJSON_AddItemToArray(results, r);
    rc = 0;
fail:
    free(kvbuf), free(pos), free(q), free(out);
    for (int i = 0; i < 5; i++)
        free(t[i]);
    skv_cache_destroy(cache);
    return rc;
}

/* HeteroCache with retrieval active against a static cache of the same device bytes:
 * one pivot and kv_heads - 1 satellites (budget 1/4 of F16), the query switching between
 * two directions every 2 * check_steps steps so the pivot drifts and every satellite
 * retrieves at every other check; the static cache is RDR (F16 or drop, knorm) at the
 * device bytes HeteroCache holds. Decode steps timed side by side, each including its
 * host work (the check, the retrieval's enqueue). */
static int retrieval_point(skv_context *ctx, const bench_opts *o, uint64_t tokens, cJSON *results)
{
    const uint32_t H = o->kv_heads, QH = o->q_heads, D = o->head_dim, chunk = 2048, steps = 10 * o->runs + 10;
    int rc = 1;
    skv_cache *cache[2] = {NULL, NULL};
    skv_hetero_profile *prof = NULL;
    float *kv = malloc((size_t)2 * chunk * H * D * 4), *q = malloc((size_t)2 * QH * D * 4), *out = malloc((size_t)QH * D * 4);
    int32_t *pos = malloc(chunk * 4);
    skv_head_category *cat = calloc(H, sizeof *cat);
    uint32_t *pivot = calloc(H, sizeof *pivot);
    double *t[2] = {calloc(steps, sizeof(double)), calloc(steps, sizeof(double))}, ratio[2] = {0, 0};
    skv_hetero_stats hs = {.struct_size = sizeof hs};
    if (!kv || !q || !out || !pos || !cat || !pivot || !t[0] || !t[1]) {
        fprintf(stderr, "skv bench: out of memory\n");
        goto fail;
    }
    for (uint32_t h = 1; h < H; h++)
        cat[h] = SKV_HEAD_SATELLITE;
    CHECK(skv_hetero_profile_create(1, H, cat, pivot, NULL, &prof));
    uint64_t state = 0x2545F4914F6CDD1Dull;
    for (size_t i = 0; i < (size_t)2 * chunk * H * D; i++) { /* keys, then values */
        state ^= state << 13, state ^= state >> 7, state ^= state << 17;
        kv[i] = (float)((double)(state >> 11) / 9007199254740992.0 - 0.5);
    }
    for (size_t i = 0; i < (size_t)2 * QH * D; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 250.0f - 2.0f;
    const float scale = 1.0f / sqrtf((float)D);
    skv_seq_id seq[2];
    for (int m = 0; m < 2; m++) { /* 0: HeteroCache, 1: static at its device bytes */
        skv_cache_desc d;
        skv_cache_desc_init(&d);
        d.layers = 1, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = 64;
        d.device_budget_bytes = 2 * ((tokens + 63) / 64 + 2) * H * 64 * (4ull * D + 4);
        d.host_budget_bytes = m == 0 ? d.device_budget_bytes : 0;
        d.retention = SKV_RETENTION_RDR, d.scorer = SKV_SCORER_KNORM;
        if (m == 0) /* the satellites' resident tokens take an ADA tier */
            d.tiers = (1u << SKV_TIER_COUNT) - 1;
        d.budget_ratio = m == 0 ? 0.25f : (float)ratio[0];
        d.slack = 1u << 30;
        CHECK(skv_cache_create(ctx, &d, &cache[m]));
        CHECK(skv_seq_create(cache[m], &seq[m]));
        if (m == 0) {
            skv_hetero_desc hd;
            skv_hetero_desc_init(&hd);
            hd.top_k = tokens / 16 < 1024 ? (uint32_t)(tokens / 16) : 1024; /* a short context: a sharper set */
            CHECK(skv_seq_hetero(cache[m], seq[m], prof, &hd));
        }
        for (uint64_t t0 = 0; t0 < tokens; t0 += chunk) {
            uint32_t n = tokens - t0 < chunk ? (uint32_t)(tokens - t0) : chunk;
            for (uint32_t i = 0; i < n; i++)
                pos[i] = (int32_t)(t0 + i);
            CHECK(skv_append(cache[m], seq[m], 0, n, SKV_F32, kv, kv + (size_t)chunk * H * D, pos));
        }
        CHECK(skv_compress(cache[m], seq[m]));
        CHECK(skv_context_finish(ctx));
        skv_cache_stats cs = {.struct_size = sizeof cs};
        CHECK(skv_cache_get_stats(cache[m], &cs));
        uint64_t dev = 0;
        for (int tier = 0; tier < SKV_TIER_COUNT; tier++)
            dev += cs.pools[tier][SKV_MEM_DEVICE].bytes_used;
        uint64_t page_bytes;
        CHECK(skv_cache_page_bytes(cache[m], SKV_TIER_F16, &page_bytes));
        ratio[m] = (double)dev / ((double)((tokens + 63) / 64) * H * page_bytes);
    }
    for (uint32_t step = 0; step < steps; step++) /* interleaved: the two see the same machine */
        for (int m = 0; m < 2; m++) {
            const float *qs = q + (size_t)((step / 10) % 2) * QH * D;
            double w0 = wall_ms();
            CHECK(skv_attention_decode(cache[m], 0, &seq[m], 1, SKV_F32, qs, scale, SKV_F32, out));
            t[m][step] = wall_ms() - w0;
            if (step % 20 == 0)
                tool_progress("bench hetero: retrieval, %llu tokens, step %u/%u", (unsigned long long)tokens, step,
                              steps);
        }
    CHECK(skv_cache_hetero_stats(cache[0], &hs));
    double mean[2] = {0, 0}; /* with the check steps' top-k and the retrievals */
    for (int m = 0; m < 2; m++) { /* the first 10 steps warm up */
        for (uint32_t i = 10; i < steps; i++)
            mean[m] += t[m][i] / (steps - 10);
        qsort(t[m] + 10, steps - 10, sizeof(double), tool_cmp_double);
    }
    const double het = t[0][10 + (steps - 10) / 2], sta = t[1][10 + (steps - 10) / 2];
    tool_progress("");
    printf("%9llu %10.3f %10.3f %7.2f %8.2f %8.3f %8.3f %8.3f %10llu %8llu\n", (unsigned long long)tokens, sta, het,
           het / sta, mean[0] / mean[1], ratio[1], ratio[0], (double)hs.host_bytes / ((double)tokens * H * 4 * D),
           (unsigned long long)hs.retrievals, (unsigned long long)hs.tokens_fetched);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "mode", "retrieval");
    cJSON_AddNumberToObject(r, "tokens", (double)tokens);
    cJSON_AddNumberToObject(r, "static_step_ms", sta);
    cJSON_AddNumberToObject(r, "hetero_step_ms", het);
    cJSON_AddNumberToObject(r, "step_ratio", het / sta);
    cJSON_AddNumberToObject(r, "static_mean_ms", mean[1]);
    cJSON_AddNumberToObject(r, "hetero_mean_ms", mean[0]);
    cJSON_AddNumberToObject(r, "static_device_ratio", ratio[1]);
    cJSON_AddNumberToObject(r, "hetero_device_ratio", ratio[0]);
    cJSON_AddNumberToObject(r, "retrievals", (double)hs.retrievals);
    cJSON_AddNumberToObject(r, "tokens_fetched", (double)hs.tokens_fetched);
    cJSON_AddNumberToObject(r, "pages_skipped", (double)hs.pages_skipped);
    cJSON_AddNumberToObject(r, "compute_waits", (double)hs.compute_waits);
    cJSON_AddItemToArray(results, r);
    rc = 0;
fail:
    for (int m = 0; m < 2; m++)
        skv_cache_destroy(cache[m]);
    skv_hetero_profile_free(prof);
    free(kv), free(q), free(out), free(pos), free(cat), free(pivot), free(t[0]), free(t[1]);
    return rc;
}

static int bench_hetero(int argc, char **argv)
{
    bench_opts o = {.n_tokens = 2, .tokens = {16384, 65536}, .kv_heads = 8, .q_heads = 32, .head_dim = 128, .runs = 20};
    double fetch = 0.25;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!v)
            return tool_usage_error(usage_bench, "bench hetero: '%s' needs a value or is unknown", a);
        if (shared_option(a, v, &o, &bad)) {
            /* parsed */
        } else if (strcmp(a, "--runs") == 0)
            bad = tool_parse_u32(v, 1, 100000, &o.runs);
        else if (strcmp(a, "--fetch") == 0) {
            char *end;
            fetch = strtod(v, &end);
            bad = *end || !(fetch > 0 && fetch <= 1);
        } else
            return tool_usage_error(usage_bench, "bench hetero: unknown option '%s'", a);
        if (bad)
            return tool_usage_error(usage_bench, "bench hetero: bad value '%s' for %s", v, a);
        i++;
    }
    for (int i = 0; i < o.n_tokens; i++)
        if ((uint64_t)(fetch * (double)o.tokens[i]) < 64)
            return tool_usage_error(usage_bench, "bench hetero: --fetch %g of %llu tokens is less than a page", fetch,
                                    (unsigned long long)o.tokens[i]);
    int rc = 1;
    skv_context *ctx = NULL;
    cJSON *root = cJSON_CreateObject();
    skv_device_profile prof;
    if (!root || tool_open_context("bench", o.device, 0, &ctx, &prof) != SKV_OK)
        goto done;
    char dev[2 * SKV_NAME_MAX + 8];
    snprintf(dev, sizeof dev, "%s (%s)", prof.name, prof.platform);
    cJSON_AddStringToObject(root, "device", dev);
    cJSON_AddStringToObject(root, "version", skv_version_string());
    cJSON_AddNumberToObject(root, "kv_heads", o.kv_heads);
    cJSON_AddNumberToObject(root, "q_heads", o.q_heads);
    cJSON_AddNumberToObject(root, "head_dim", o.head_dim);
    cJSON *results = cJSON_AddArrayToObject(root, "results");
    printf("device: %s\nhost tier: %.3g of a sequence moved, F16, median of %u (wall clock, ms)\n\n", dev, fetch,
           o.runs);
    printf("%9s %9s %10s %8s %8s %8s %8s %9s %10s %8s %7s\n", "tokens", "moved", "MB", "offload", "GB/s", "fetch",
           "GB/s", "decode", "together", "overlap", "steps");
    for (int i = 0; i < o.n_tokens; i++)
        if (hetero_point(ctx, &o, fetch, o.tokens[i], results) != 0)
            goto done;
    printf("\nretrieval: one pivot, %u satellites at 1/4 of F16, the query switching every 10 steps, vs a static\n"
           "cache (RDR, F16 or drop) of the same device bytes; median decode step (ms, wall clock, with host work)\n\n",
           o.kv_heads - 1);
    printf("%9s %10s %10s %7s %8s %8s %8s %8s %10s %8s\n", "tokens", "static", "hetero", "ratio", "mean_r", "dev_sta",
           "dev_het",
           "host", "retrievals", "fetched");
    for (int i = 0; i < o.n_tokens; i++)
        if (retrieval_point(ctx, &o, o.tokens[i], results) != 0)
            goto done;
    rc = 0;
    if (o.json) {
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(o.json, text) != 0) {
            fprintf(stderr, "skv bench: cannot write %s\n", o.json);
            rc = 1;
        }
        free(text);
    }
done:
    cJSON_Delete(root);
    skv_context_destroy(ctx);
    return rc;
}

int cmd_bench(int argc, char **argv)
{
    if (argc < 2)
        return tool_usage_error(usage_bench, "bench: missing benchmark (decode, compress or hetero)");
    if (strcmp(argv[1], "decode") == 0)
        return bench_decode(argc - 1, argv + 1);
    if (strcmp(argv[1], "compress") == 0)
        return bench_compress(argc - 1, argv + 1);
    if (strcmp(argv[1], "hetero") == 0)
        return bench_hetero(argc - 1, argv + 1);
    return tool_usage_error(usage_bench, "bench: unknown benchmark '%s'", argv[1]);
}
