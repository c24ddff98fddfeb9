/* `skv eval --late-shift`: HeteroCache against static retention at equal device bytes,
 * on a scenario built for it. Every kv-head of a layer sees the same token keys (with a
 * little noise per head), so their attention is alike: one pivot and satellites. Early
 * queries attend to the sinks and a set of heavy hitters; needles planted in the middle
 * of the context are attended by no early query, then each in turn by a late query
 * that stays on it for a few decode steps (a runtime generating about it). Static RDR
 * with an attention-based scorer (observed, snapkv) has dropped the needles by then;
 * HeteroCache keeps the satellites' full KV in host memory and fetches the needle's
 * pages when the pivot's top-k drifts. The profile comes from calibrating a dense copy
 * of the sequence on the early queries, as a runtime would once per model. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "skv_ref.h"
#include "skv_tool.h"

#define CHECK(call) TOOL_CHECK("eval", done, call)

enum { LAYERS = 2, KV_HEADS = 16, GROUP = 2, DIM = 64, PAGE = 16, SINKS = 4, HITTERS = 48, EARLY = 16,
       SINGLE = 4, MULTI = 3, NEEDLES = SINGLE + MULTI, ORDINARY = 4 };

typedef struct scenario {
    uint64_t tokens;
    float *k, *v;          /* [layer][t][h][d] */
    float *sink, *hitter;  /* [layer][d] directions */
    float *needle;         /* [layer][needle][d] unit directions */
    float *nvalue;         /* [layer][needle][h][d] */
    uint64_t needle_pos[NEEDLES];
} scenario;

typedef struct rng {
    uint64_t s;
} rng;

static double uniform(rng *r)
{
    r->s ^= r->s << 13, r->s ^= r->s >> 7, r->s ^= r->s << 17;
    return (double)(r->s >> 11) * (1.0 / 9007199254740992.0);
}

static float gauss(rng *r)
{
    double u = uniform(r) + 1e-12, v = uniform(r);
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

static void unit(rng *r, float *x)
{
    double n = 0;
    for (int i = 0; i < DIM; i++)
        x[i] = gauss(r), n += x[i] * x[i];
    for (int i = 0; i < DIM; i++)
        x[i] = (float)(x[i] / sqrt(n));
}

static int scenario_init(scenario *s, uint64_t tokens)
{
    memset(s, 0, sizeof *s);
    s->tokens = tokens;
    const size_t per_layer = (size_t)tokens * KV_HEADS * DIM;
    s->k = malloc(LAYERS * per_layer * sizeof *s->k);
    s->v = malloc(LAYERS * per_layer * sizeof *s->v);
    s->sink = malloc(LAYERS * DIM * sizeof *s->sink);
    s->hitter = malloc(LAYERS * DIM * sizeof *s->hitter);
    s->needle = malloc((size_t)LAYERS * NEEDLES * DIM * sizeof *s->needle);
    s->nvalue = malloc((size_t)LAYERS * NEEDLES * KV_HEADS * DIM * sizeof *s->nvalue);
    if (!s->k || !s->v || !s->sink || !s->hitter || !s->needle || !s->nvalue)
        return -1;
    rng r = {0x5EED0F5A7E111732ull};
    for (int j = 0; j < NEEDLES; j++) /* spread over the middle of the context, off page boundaries */
        s->needle_pos[j] = tokens / 8 + (uint64_t)j * (tokens / 2) / NEEDLES + 5;
    for (int l = 0; l < LAYERS; l++) {
        unit(&r, s->sink + l * DIM);
        unit(&r, s->hitter + l * DIM);
        float common[DIM];
        unit(&r, common);
        for (int j = 0; j < NEEDLES; j++) {
            float *u = s->needle + ((size_t)l * NEEDLES + j) * DIM;
            unit(&r, u);
            if (j >= SINGLE) { /* a group sharing most of one direction: cosine ~0.8 */
                double n = 0;
                for (int i = 0; i < DIM; i++)
                    u[i] = 0.9f * common[i] + 0.45f * u[i], n += u[i] * u[i];
                for (int i = 0; i < DIM; i++)
                    u[i] = (float)(u[i] / sqrt(n));
            }
            for (int i = 0; i < KV_HEADS * DIM; i++)
                s->nvalue[((size_t)l * NEEDLES + j) * KV_HEADS * DIM + i] = 2.0f * gauss(&r);
        }
        for (uint64_t t = 0; t < tokens; t++) {
            float base[DIM];
            int needle = -1;
            for (int j = 0; j < NEEDLES; j++)
                needle = s->needle_pos[j] == t ? j : needle;
            const int hitter = t >= SINKS && (t * 2654435761u) % (tokens / HITTERS) == 0;
            for (int i = 0; i < DIM; i++) {
                base[i] = 0.5f * gauss(&r);
                if (t < SINKS)
                    base[i] += 3.0f * s->sink[l * DIM + i];
                else if (needle >= 0)
                    base[i] = 5.0f * s->needle[((size_t)l * NEEDLES + needle) * DIM + i];
                else if (hitter)
                    base[i] += 3.0f * s->hitter[l * DIM + i];
            }
            for (int h = 0; h < KV_HEADS; h++)
                for (int i = 0; i < DIM; i++) {
                    const size_t at = (((size_t)l * tokens + t) * KV_HEADS + h) * DIM + i;
                    s->k[at] = base[i] + 0.15f * gauss(&r);
                    s->v[at] = needle >= 0 ? s->nvalue[(((size_t)l * NEEDLES + needle) * KV_HEADS + h) * DIM + i]
                                           : gauss(&r);
                }
        }
    }
    return 0;
}

static void scenario_free(scenario *s)
{
    free(s->k), free(s->v), free(s->sink), free(s->hitter), free(s->needle), free(s->nvalue);
}

/* An early query (sinks and heavy hitters), or one aimed at needle j: [q_heads][d]. */
static void query(const scenario *s, uint32_t l, int needle, uint64_t salt, float *q)
{
    rng r = {0x9E3779B97F4A7C15ull ^ (salt * 0x100000001B3ull + l)};
    for (int qh = 0; qh < KV_HEADS * GROUP; qh++)
        for (int i = 0; i < DIM; i++) {
            float x = 0.1f * gauss(&r);
            if (needle < 0)
                x += 12.0f * s->sink[l * DIM + i] + 12.0f * s->hitter[l * DIM + i];
            else
                x += 20.0f * s->needle[((size_t)l * NEEDLES + needle) * DIM + i];
            q[qh * DIM + i] = x;
        }
}

typedef enum policy { STATIC_OBSERVED, STATIC_SNAPKV, HETERO, HETERO_NO_RETRIEVAL, POLICIES } policy;
static const char *const policy_names[POLICIES] = {"rdr-observed", "rdr-snapkv", "hetero", "hetero-no-retrieval"};

typedef struct result {
    double device_ratio, host_ratio, needles, multikey, out_err;
    skv_hetero_stats hs;
    uint32_t pivots, satellites, anchors, volatiles;
} result;

static void cache_desc(const scenario *s, skv_cache_desc *d, policy p, double budget)
{
    skv_cache_desc_init(d);
    d->layers = LAYERS, d->kv_heads = KV_HEADS, d->q_heads = KV_HEADS * GROUP, d->head_dim = DIM;
    d->page_tokens = PAGE;
    d->device_budget_bytes = 4 * ((s->tokens + PAGE - 1) / PAGE + 4) * LAYERS * KV_HEADS * PAGE * (4ull * DIM + 4);
    d->host_budget_bytes = p >= HETERO ? d->device_budget_bytes : 0;
    d->retention = SKV_RETENTION_RDR;
    d->tiers = (1u << SKV_TIER_COUNT) - 1; /* every policy: F16, the ADA tiers or drop */
    d->scorer = p == STATIC_SNAPKV ? SKV_SCORER_SNAPKV : SKV_SCORER_OBSERVED;
    d->budget_ratio = (float)budget;
    d->n_sink = SINKS;
    d->recent_window = 32;
    d->slack = 1u << 30; /* compression when the run says */
}

/* The profile: a dense cache of the same tokens, calibrated on the early queries. */
static skv_status calibrate(skv_context *ctx, const scenario *s, skv_hetero_profile **out)
{
    skv_cache_desc d;
    cache_desc(s, &d, HETERO, 1.0);
    d.retention = SKV_RETENTION_NONE;
    d.scorer = SKV_SCORER_NONE;
    skv_cache *c = NULL;
    skv_seq_id seq;
    float *q = malloc(KV_HEADS * GROUP * DIM * sizeof *q), *o = malloc(KV_HEADS * GROUP * DIM * sizeof *o);
    int32_t *pos = malloc(s->tokens * sizeof *pos);
    skv_status st = q && o && pos ? skv_cache_create(ctx, &d, &c) : SKV_ERR_OUT_OF_MEMORY;
    for (uint64_t t = 0; pos && t < s->tokens; t++)
        pos[t] = (int32_t)t;
    if (st == SKV_OK)
        st = skv_seq_create(c, &seq);
    for (uint32_t l = 0; st == SKV_OK && l < LAYERS; l++)
        st = skv_append(c, seq, l, (uint32_t)s->tokens, SKV_F32, s->k + (size_t)l * s->tokens * KV_HEADS * DIM,
                        s->v + (size_t)l * s->tokens * KV_HEADS * DIM, pos);
    skv_hetero_desc hd;
    skv_hetero_desc_init(&hd);
    hd.top_k = 64;
    if (st == SKV_OK)
        st = skv_hetero_calibrate_begin(c, seq, &hd);
    for (uint32_t step = 0; st == SKV_OK && step < EARLY; step++)
        for (uint32_t l = 0; st == SKV_OK && l < LAYERS; l++) {
            query(s, l, -1, step, q);
            st = skv_attention_decode(c, l, &seq, 1, SKV_F32, q, 1.0f / sqrtf(DIM), SKV_F32, o);
        }
    if (st == SKV_OK)
        st = skv_hetero_calibrate_end(c, seq, out);
    skv_cache_destroy(c);
    free(q), free(o), free(pos);
    return st;
}

/* Cosine of each q-head's output with the needle's value, averaged. */
static double needle_cosine(const scenario *s, uint32_t l, int j, const float *o)
{
    double cs = 0;
    for (int qh = 0; qh < KV_HEADS * GROUP; qh++) {
        const float *v = s->nvalue + (((size_t)l * NEEDLES + j) * KV_HEADS + qh / GROUP) * DIM;
        double dot = 0, no = 0, nv = 0;
        for (int i = 0; i < DIM; i++)
            dot += (double)o[qh * DIM + i] * v[i], no += (double)o[qh * DIM + i] * o[qh * DIM + i], nv += v[i] * v[i];
        cs += dot / sqrt(no * nv + 1e-30);
    }
    return cs / (KV_HEADS * GROUP);
}

static int run_policy(skv_context *ctx, const scenario *s, const skv_hetero_profile *prof, policy p, double budget,
                      result *res)
{
    int rc = 1;
    const uint32_t QH = KV_HEADS * GROUP;
    const float scale = 1.0f / sqrtf(DIM);
    skv_cache_desc d;
    cache_desc(s, &d, p, budget);
    skv_cache *c = NULL;
    skv_seq_id seq;
    float *q = malloc(QH * DIM * sizeof *q), *o = malloc(QH * DIM * sizeof *o);
    float *wq = malloc((size_t)EARLY * QH * DIM * sizeof *wq);
    int32_t *pos = malloc(s->tokens * sizeof *pos);
    double *ref = malloc(QH * DIM * sizeof *ref);
    memset(res, 0, sizeof *res);
    if (!q || !o || !wq || !pos || !ref) {
        fprintf(stderr, "skv eval: out of memory\n");
        goto done;
    }
    for (uint64_t t = 0; t < s->tokens; t++)
        pos[t] = (int32_t)t;
    CHECK(skv_cache_create(ctx, &d, &c));
    CHECK(skv_seq_create(c, &seq));
    skv_hetero_desc hd;
    skv_hetero_desc_init(&hd);
    hd.top_k = 64;
    hd.retrieval = p == HETERO;
    if (p >= HETERO)
        CHECK(skv_seq_hetero(c, seq, prof, &hd));
    for (uint32_t l = 0; l < LAYERS; l++)
        CHECK(skv_append(c, seq, l, (uint32_t)s->tokens, SKV_F32, s->k + (size_t)l * s->tokens * KV_HEADS * DIM,
                         s->v + (size_t)l * s->tokens * KV_HEADS * DIM, pos));
    if (p >= HETERO) /* the satellites placed first: the pivots' references come from the early steps */
        CHECK(skv_compress(c, seq));
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (uint32_t step = 0; step < EARLY; step++) {
            query(s, l, -1, step, wq + (size_t)step * QH * DIM);
            CHECK(skv_attention_decode(c, l, &seq, 1, SKV_F32, wq + (size_t)step * QH * DIM, scale, SKV_F32, o));
        }
        if (p == STATIC_SNAPKV)
            CHECK(skv_seq_observe_window(c, seq, l, EARLY, SKV_F32, wq, pos + s->tokens - EARLY));
    }
    if (p < HETERO)
        CHECK(skv_compress(c, seq));
    /* each needle in turn: its query for check_steps + 2 decode steps, the output of the last */
    int found = 0, found_mk = 0;
    for (uint32_t l = 0; l < LAYERS; l++)
        for (int j = 0; j < NEEDLES; j++) {
            query(s, l, j, 1000 + (uint64_t)j, q);
            for (uint32_t step = 0; step < hd.check_steps + 2; step++) {
                CHECK(skv_attention_decode(c, l, &seq, 1, SKV_F32, q, scale, SKV_F32, o));
                CHECK(skv_context_finish(ctx));
            }
            const int hit = needle_cosine(s, l, j, o) >= 0.9;
            if (j < SINGLE)
                found += hit;
            else
                found_mk += hit;
        }
    /* ordinary queries afterwards: output error against exact attention over every token */
    double err = 0;
    for (uint32_t l = 0; l < LAYERS; l++)
        for (int i = 0; i < ORDINARY; i++) {
            query(s, l, -1, 500 + (uint64_t)i, q); /* back to ordinary text, for as many steps */
            for (uint32_t step = 0; step < hd.check_steps + 2; step++) {
                CHECK(skv_attention_decode(c, l, &seq, 1, SKV_F32, q, scale, SKV_F32, o));
                CHECK(skv_context_finish(ctx));
            }
            skv_ref_attention_decode(q, s->k + (size_t)l * s->tokens * KV_HEADS * DIM,
                                     s->v + (size_t)l * s->tokens * KV_HEADS * DIM, s->tokens, QH, KV_HEADS, DIM, scale,
                                     ref);
            err += skv_ref_rel_l2(ref, o, (size_t)QH * DIM);
        }
    res->out_err = err / (LAYERS * ORDINARY);
    res->needles = (double)found / (LAYERS * SINGLE);
    res->multikey = (double)found_mk / (LAYERS * MULTI);
    res->hs.struct_size = sizeof res->hs;
    CHECK(skv_cache_hetero_stats(c, &res->hs));
    uint64_t page_bytes;
    CHECK(skv_cache_page_bytes(c, SKV_TIER_F16, &page_bytes));
    const double f16 = (double)((s->tokens + PAGE - 1) / PAGE) * LAYERS * KV_HEADS * page_bytes;
    res->device_ratio = (double)res->hs.device_bytes / f16;
    res->host_ratio = (double)res->hs.host_bytes / f16;
    for (uint32_t l = 0; prof && l < LAYERS; l++)
        for (uint32_t h = 0; h < KV_HEADS; h++) {
            skv_head_category cat;
            CHECK(skv_hetero_profile_head(prof, l, h, &cat, NULL, NULL));
            res->pivots += cat == SKV_HEAD_PIVOT, res->satellites += cat == SKV_HEAD_SATELLITE;
            res->anchors += cat == SKV_HEAD_ANCHOR, res->volatiles += cat == SKV_HEAD_VOLATILE;
        }
    rc = 0;
done:
    skv_cache_destroy(c);
    free(q), free(o), free(wq), free(pos), free(ref);
    return rc;
}

int eval_late_shift(int argc, char **argv)
{
    uint64_t tokens = 4096;
    const char *json = NULL, *device = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--late-shift") == 0)
            continue;
        if (!v)
            return tool_usage_error(usage_eval, "eval --late-shift: '%s' needs a value or is unknown", a);
        if (strcmp(a, "--tokens") == 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || *end || n < 1024 || n > (1u << 18))
                return tool_usage_error(usage_eval, "eval --late-shift: --tokens must be in 1024..262144");
            tokens = n;
        } else if (strcmp(a, "--json") == 0) {
            json = v;
        } else if (strcmp(a, "--device") == 0) {
            device = v;
        } else {
            return tool_usage_error(usage_eval, "eval --late-shift: unknown option '%s'", a);
        }
        i++;
    }
    int rc = 1;
    skv_context *ctx = NULL;
    skv_hetero_profile *prof = NULL;
    scenario s;
    cJSON *root = cJSON_CreateObject(), *rows = root ? cJSON_AddArrayToObject(root, "results") : NULL;
    skv_device_profile dp;
    if (scenario_init(&s, tokens) != 0 || !rows) {
        fprintf(stderr, "skv eval: out of memory\n");
        goto done;
    }
    if (tool_open_context("eval", device, 0, &ctx, &dp) != SKV_OK)
        goto done;
    CHECK(calibrate(ctx, &s, &prof));
    printf("device: %s (%s)\nlate shift: %d layers, %d kv-heads x %d, head_dim %d, %llu tokens, %d single "
           "needles and a group of %d\n\n",
           dp.name, dp.platform, LAYERS, KV_HEADS, GROUP, DIM, (unsigned long long)tokens, SINGLE, MULTI);
    printf("%-20s %6s %7s %7s %7s %9s %8s %10s %8s %s\n", "policy", "budget", "device", "host", "needle", "multikey",
           "out_err", "retrievals", "tokens in", "heads (pivot/sat/anchor/volatile)");
    const double budgets[2] = {0.125, 0.25};
    for (int b = 0; b < 2; b++)
        for (int p = 0; p < POLICIES; p++) {
            result r;
            tool_progress("eval --late-shift: %s at %g", policy_names[p], budgets[b]);
            if (run_policy(ctx, &s, p >= HETERO ? prof : NULL, (policy)p, budgets[b], &r) != 0)
                goto done;
            tool_progress("");
            char heads[64] = "-";
            if (p >= HETERO)
                snprintf(heads, sizeof heads, "%u/%u/%u/%u", r.pivots, r.satellites, r.anchors, r.volatiles);
            printf("%-20s %6.3f %7.3f %7.3f %7.2f %9.2f %8.3f %10llu %8llu %s\n", policy_names[p], budgets[b],
                   r.device_ratio, r.host_ratio, r.needles, r.multikey, r.out_err,
                   (unsigned long long)r.hs.retrievals, (unsigned long long)r.hs.tokens_fetched, heads);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "policy", policy_names[p]);
            cJSON_AddNumberToObject(o, "budget", budgets[b]);
            cJSON_AddNumberToObject(o, "device_bytes_ratio", r.device_ratio);
            cJSON_AddNumberToObject(o, "host_bytes_ratio", r.host_ratio);
            cJSON_AddNumberToObject(o, "needle_recall", r.needles);
            cJSON_AddNumberToObject(o, "multikey_recall", r.multikey);
            cJSON_AddNumberToObject(o, "out_rel_err", r.out_err);
            cJSON_AddNumberToObject(o, "retrievals", (double)r.hs.retrievals);
            cJSON_AddNumberToObject(o, "tokens_fetched", (double)r.hs.tokens_fetched);
            cJSON_AddNumberToObject(o, "pages_evicted", (double)r.hs.pages_evicted);
            cJSON_AddItemToArray(rows, o);
        }
    if (json) {
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(json, text) != 0) {
            fprintf(stderr, "skv eval: cannot write %s\n", json);
            free(text);
            goto done;
        }
        free(text);
    }
    rc = 0;
done:
    skv_hetero_profile_free(prof);
    skv_context_destroy(ctx);
    scenario_free(&s);
    cJSON_Delete(root);
    return rc;
}
