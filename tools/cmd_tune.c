/* `skv tune`: measures decode variants per problem class on one device and writes the
 * fastest to the tuning database (host/tuning.c reads it) as entries for this exact
 * device and driver. Every candidate is held to the C reference before it is timed. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "skv_internal.h" /* skvi_tiers: the ADA tiers' codec and value parameters */
#include "skv_ref.h"
#include "skv_tool.h"

/* Relative L2 error a candidate may have against the default variant's output, and the
 * default (and every candidate) against fp64 attention over what the cache holds. */
#define TOLERANCE 1e-4
#define MAX_CANDIDATES 64
#define MAX_DB_BYTES (4u << 20)

void usage_tune(FILE *out)
{
    fprintf(out,
            "usage: skv tune [options]\n"
            "  Measures decode variants for each problem class (tier, head_dim, q-heads per\n"
            "  kv-head) on one device and writes the fastest to the tuning database, as\n"
            "  entries for this exact device and driver: caches created afterwards take them\n"
            "  (`skv info` shows which parameters each tier gets, and from where).\n"
            "  Per class one cache holds --tokens tokens (keys and values drawn at random,\n"
            "  fp16; an ADA tier holds every full page, a partial last page stays f16). Every\n"
            "  candidate's output must be within relative L2 1e-4 of the default variant's and\n"
            "  of fp64 attention computed in C over what the cache holds: for f16 the fp16 keys\n"
            "  and values, for an ADA tier each key and value encoded and decoded by the C\n"
            "  reference of the codec (src/ref/). A candidate that misses\n"
            "  either, or that the device cannot build or run, is rejected and reported. The\n"
            "  others are timed (OpenCL profiling events, 1 warm-up, median of --runs). The\n"
            "  default is the built-in variant (whatever the database holds). The three\n"
            "  fastest and the default are then timed again in 3 interleaved rounds; a class\n"
            "  keeps the default unless a candidate's median over the rounds is 3%% lower.\n"
            "  Candidates: lanes16, lanes8, lanes4 x chunks per compute unit 1, 2, 4, 8 (f16\n"
            "  also x f16 slots per key pass 1, 2, 4, 8); group x tile 64, 128, 256 x chunks\n"
            "  2, 4, 8.\n"
            "  --kernels LIST       kernels to tune (default: decode, the only one)\n"
            "  --tiers LIST         default f16,a4v8,a3v4,a2v2\n"
            "  --head-dim N         default 128\n"
            "  --q-heads N          default 32\n"
            "  --kv-heads N         default 8\n"
            "  --tokens N           context length per class (default 16384)\n"
            "  --runs N             timed runs per candidate (default 10)\n"
            "  --fraction F         try this fraction of the candidates, drawn at random but\n"
            "                       the same every run (default 1; the default always runs)\n"
            "  --budget-seconds S   try no new candidate after S seconds (the best so far is\n"
            "                       kept; classes not started by then are left out)\n"
            "  --output FILE        the database to write (default: $SKV_TUNING_DB, else\n"
            "                       tuning.json in the program cache directory). Its entries\n"
            "                       for other devices and classes are kept, and classes this\n"
            "                       device already has an exact entry for are skipped\n"
            "  --force              tune those classes again (and replace an existing file\n"
            "                       that is not a valid skv-tuning version 1 database)\n"
            "  --device SEL         device selector (default: SKV_DEVICE, else GPU, else CPU)\n");
}

#define CONFIRM 3          /* the fastest candidates of the first pass timed again */
#define CONFIRM_ROUNDS 3   /* interleaved rounds of them and the default */
#define CONFIRM_MARGIN 0.03 /* how much faster than the default a winner must be */

typedef struct tune_opts {
    int tiers[SKV_TIER_COUNT];
    int n_tiers;
    uint32_t head_dim, q_heads, kv_heads, runs;
    uint64_t tokens;
    double fraction, budget_s; /* budget_s < 0: none */
    const char *output, *device;
    int force;
} tune_opts;

enum class_state { CLASS_PENDING, CLASS_TUNED, CLASS_SKIPPED, CLASS_FAILED, CLASS_OVER_BUDGET };

typedef struct class_result {
    int tier;
    enum class_state state;
    skv_decode_params def, best; /* as the cache ran them */
    double def_ms, best_ms, ref_err;
    int tried, total, rejected;
    int cut; /* stopped by the budget */
} class_result;

static int parse_double(const char *s, double lo, double hi, int lo_open, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !(lo_open ? v > lo : v >= lo) || !(v <= hi))
        return -1;
    *out = v;
    return 0;
}

static int parse_tiers(const char *s, tune_opts *o)
{
    o->n_tiers = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        int found = tool_tier_index(s, len);
        for (int i = 0; found >= 0 && i < o->n_tiers; i++)
            if (o->tiers[i] == found)
                found = -1; /* named twice */
        if (found < 0 || o->n_tiers == SKV_TIER_COUNT)
            return -1;
        o->tiers[o->n_tiers++] = found;
        s += len + (s[len] == ',');
    }
    return o->n_tiers ? 0 : -1;
}

/* --kernels: every name must be one that exists. */
static int parse_kernels(const char *s, char *bad, size_t n)
{
    int count = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len != 6 || strncmp(s, "decode", 6) != 0) {
            snprintf(bad, n, "%.*s", (int)(len < 64 ? len : 64), s);
            return -1;
        }
        count++;
        s += len + (s[len] == ',');
    }
    if (!count)
        snprintf(bad, n, "%s", "");
    return count ? 0 : -1;
}

/* ---- contexts and the database file ------------------------------------------------ */

/* A context whose tuning database is `db` (NULL: the usual $SKV_TUNING_DB or program
 * cache location); the database is read when the context is created. */
static skv_status open_with_db(const char *db, const char *device, int profiling, skv_context **ctx,
                               skv_device_profile *prof)
{
    const char *old = getenv("SKV_TUNING_DB");
    char *saved = old ? strdup(old) : NULL;
    if (db && setenv("SKV_TUNING_DB", db, 1) != 0) {
        fprintf(stderr, "skv tune: cannot set SKV_TUNING_DB\n");
        free(saved);
        return SKV_ERR_OUT_OF_MEMORY;
    }
    skv_status st = tool_open_context("tune", device, profiling, ctx, prof);
    if (db) {
        if (saved)
            setenv("SKV_TUNING_DB", saved, 1);
        else
            unsetenv("SKV_TUNING_DB");
    }
    free(saved);
    return st;
}

/* The whole file as text: 0 read, 1 absent, -1 unreadable or too large. */
static int read_text(const char *path, char **text)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? 1 : -1;
    char *buf = malloc(MAX_DB_BYTES + 1);
    size_t len = buf ? fread(buf, 1, MAX_DB_BYTES + 1, f) : 0;
    int bad = !buf || ferror(f) || len > MAX_DB_BYTES;
    fclose(f);
    if (bad) {
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    *text = buf;
    return 0;
}

/* Creates the folders above `path` (mkdir -p of its dirname); failures show on writing. */
static void make_parent_dirs(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return;
    char *slash = strrchr(p, '/');
    if (slash && slash != p) {
        *slash = '\0';
        for (char *s = p + 1; *s; s++)
            if (*s == '/') {
                *s = '\0';
                mkdir(p, 0777);
                *s = '/';
            }
        mkdir(p, 0777);
    }
    free(p);
}

static const char *json_string(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int json_equals_uint(const cJSON *o, const char *key, uint32_t want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) && v->valuedouble == (double)want;
}

/* Whether database entry e is this device's exact entry for the class. */
static int is_class_entry(const cJSON *e, const skv_device_profile *prof, int tier, uint32_t head_dim, uint32_t group)
{
    const char *device = json_string(e, "device"), *driver = json_string(e, "driver"),
               *kernel = json_string(e, "kernel"), *t = json_string(e, "tier");
    return device && driver && kernel && t && strcmp(device, prof->name) == 0 &&
           strcmp(driver, prof->driver_version) == 0 && strcmp(kernel, "decode") == 0 &&
           strcmp(t, tool_tier_names[tier]) == 0 && json_equals_uint(e, "head_dim", head_dim) &&
           json_equals_uint(e, "group", group);
}

static int has_class_entry(const cJSON *entries, const skv_device_profile *prof, int tier, uint32_t head_dim,
                           uint32_t group)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, entries)
    {
        if (is_class_entry(e, prof, tier, head_dim, group))
            return 1;
    }
    return 0;
}

static double round4(double ms)
{
    return round(ms * 1e4) / 1e4;
}

/* Replaces the class's exact entries for this device with one for `r` and writes the
 * database. 0 on success. */
static int store_class(cJSON *root, const char *path, const skv_device_profile *prof, const tune_opts *o,
                       const class_result *r)
{
    const uint32_t group = o->q_heads / o->kv_heads;
    cJSON *entries = cJSON_GetObjectItemCaseSensitive(root, "entries");
    for (int i = cJSON_GetArraySize(entries) - 1; i >= 0; i--)
        if (is_class_entry(cJSON_GetArrayItem(entries, i), prof, r->tier, o->head_dim, group))
            cJSON_DeleteItemFromArray(entries, i);
    cJSON *e = cJSON_CreateObject();
    cJSON *params = tool_variant_json(&r->best);
    if (!e || !params) {
        cJSON_Delete(e);
        cJSON_Delete(params);
        return -1;
    }
    cJSON_AddStringToObject(e, "device", prof->name);
    cJSON_AddStringToObject(e, "driver", prof->driver_version);
    /* no "vendor": a winner applies to this device, or to one of its architecture (the
     * same instruction set), never to every CPU or GPU of the vendor class */
    cJSON_AddStringToObject(e, "architecture", prof->architecture);
    cJSON_AddStringToObject(e, "kernel", "decode");
    cJSON_AddStringToObject(e, "tier", tool_tier_names[r->tier]);
    cJSON_AddNumberToObject(e, "head_dim", o->head_dim);
    cJSON_AddNumberToObject(e, "group", group);
    cJSON_AddItemToObject(e, "params", params);
    cJSON_AddNumberToObject(e, "ms", round4(r->best_ms));
    cJSON_AddNumberToObject(e, "default_ms", round4(r->def_ms));
    cJSON_AddNumberToObject(e, "context", (double)o->tokens);
    cJSON_AddItemToArray(entries, e);
    char *text = cJSON_Print(root);
    if (!text)
        return -1;
    size_t n = strlen(text);
    char *line = realloc(text, n + 2); /* a final newline */
    if (!line) {
        free(text);
        return -1;
    }
    line[n] = '\n', line[n + 1] = '\0';
    make_parent_dirs(path);
    int rc = tool_write_file(path, line);
    free(line);
    return rc;
}

/* ---- one problem class ------------------------------------------------------------- */

/* The candidate variants for a tier, each the default `base` with some fields set. */
static int candidates(int tier, const skv_decode_params *base, skv_decode_params *out)
{
    static const uint32_t lanes[] = {16, 8, 4}, lane_chunks[] = {1, 2, 4, 8}, slots[] = {1, 2, 4, 8},
                          tiles[] = {64, 128, 256}, group_chunks[] = {2, 4, 8};
    int n = 0;
    for (int l = 0; l < 3; l++)
        for (int c = 0; c < 4; c++)
            for (int s = 0; s < (tier == SKV_TIER_F16 ? 4 : 1); s++) {
                skv_decode_params p = *base;
                p.schedule = SKV_SCHEDULE_LANES, p.lanes = lanes[l], p.chunks_per_cu = lane_chunks[c];
                if (tier == SKV_TIER_F16)
                    p.f16_slots = slots[s];
                out[n++] = p;
            }
    for (int t = 0; t < 3; t++)
        for (int c = 0; c < 3; c++) {
            skv_decode_params p = *base;
            p.schedule = SKV_SCHEDULE_GROUP, p.tile = tiles[t], p.chunks_per_cu = group_chunks[c];
            out[n++] = p;
        }
    return n;
}

static int same_params(const skv_decode_params *a, const skv_decode_params *b)
{
    return a->schedule == b->schedule && a->lanes == b->lanes && a->tile == b->tile &&
           a->chunks_per_cu == b->chunks_per_cu && a->f16_slots == b->f16_slots;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* A standard normal pair (Box-Muller). */
static void gauss2(uint64_t *s, float *a, float *b)
{
    double u = ((double)(xorshift(s) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double v = (double)(xorshift(s) >> 11) * (1.0 / 9007199254740992.0);
    double r = sqrt(-2.0 * log(u));
    *a = (float)(r * cos(6.283185307179586 * v));
    *b = (float)(r * sin(6.283185307179586 * v));
}

/* Keys and values as the cache holds them: for an ADA tier each token of a full page
 * encoded and decoded by the C reference (the device's encoder is bit-identical to it,
 * tests/test_ada_kernels.c), the partial last page left in f16. In place. */
static int decode_as_held(int tier, const tune_opts *o, float *k, float *v)
{
    if (tier == SKV_TIER_F16)
        return 0;
    const uint32_t H = o->kv_heads, D = o->head_dim, P = 64;
    const skvi_tier_desc *td = &skvi_tiers[tier];
    skv_ref_ada_params p;
    skv_ref_ada_params_init(&p, D, td->radius_bits, td->angle_bits);
    const uint32_t vbytes = skv_ref_value_bytes(D, td->value_bits, td->value_group);
    int8_t *signs = malloc((size_t)H * D);
    uint32_t *words = malloc((size_t)p.key_words * 4);
    uint8_t *vq = malloc(vbytes);
    if (!signs || !words || !vq) {
        free(signs), free(words), free(vq);
        return -1;
    }
    for (uint32_t h = 0; h < H; h++)
        skv_ref_ada_signs(0, h, D, signs + (size_t)h * D);
    const uint64_t held = o->tokens / P * P;
    for (uint64_t t = 0; t < held; t++)
        for (uint32_t h = 0; h < H; h++) {
            const size_t at = ((size_t)t * H + h) * D;
            uint16_t norm;
            skv_ref_ada_encode_key(&p, signs + (size_t)h * D, k + at, words, &norm);
            skv_ref_ada_decode_key(&p, signs + (size_t)h * D, words, norm, k + at);
            skv_ref_value_encode(v + at, D, td->value_bits, td->value_group, vq);
            skv_ref_value_decode(vq, D, td->value_bits, td->value_group, v + at);
        }
    free(signs), free(words), free(vq);
    return 0;
}

#define CHECK(call) TOOL_CHECK("tune", fail, call)

/* Sets a candidate and runs it: a warm-up whose output is checked,
 * then `runs` timed calls. 1 when it ran (*median set), 0 when it was rejected (why
 * set), -1 on a failure that is not the candidate's. */
static int try_candidate(skv_cache *cache, int tier, skv_seq_id seq, const skv_decode_params *p, const float *q,
                         float scale, size_t n_out, float *out, const double *ref, const double *def_out, uint32_t runs,
                         double *times, skv_decode_params *used, double *median, double *err, char *why, size_t nwhy)
{
    skv_status st = skv_cache_set_decode_params(cache, p);
    if (st == SKV_OK)
        st = skv_cache_decode_params(cache, (skv_tier)tier, used);
    if (st == SKV_ERR_OUT_OF_MEMORY || st == SKV_ERR_INTERNAL) {
        fprintf(stderr, "\nskv tune: %s: %s\n", skv_status_str(st), skv_last_error());
        return -1;
    }
    if (st != SKV_OK) {
        snprintf(why, nwhy, "%s: %s", skv_status_str(st), skv_last_error());
        return 0;
    }
    for (size_t i = 0; i < n_out; i++)
        out[i] = NAN; /* poison: what decode does not write fails the check */
    for (uint32_t r = 0; r <= runs && st == SKV_OK; r++) { /* run 0 is the warm-up */
        st = skv_attention_decode(cache, 0, &seq, 1, SKV_F32, q, scale, SKV_F32, out);
        double ms = 0;
        if (st == SKV_OK)
            st = skv_cache_last_decode_ms(cache, &ms);
        if (st != SKV_OK)
            break;
        if (r > 0) {
            times[r - 1] = ms;
            continue;
        }
        *err = skv_ref_rel_l2(ref, out, n_out);
        const double e_def = def_out ? skv_ref_rel_l2(def_out, out, n_out) : 0.0;
        if (!(*err <= TOLERANCE)) {
            snprintf(why, nwhy, "output %.3g from the fp64 reference (tolerance %.0e)", *err, TOLERANCE);
            return 0;
        }
        if (!(e_def <= TOLERANCE)) {
            snprintf(why, nwhy, "output %.3g from the default variant's (tolerance %.0e)", e_def, TOLERANCE);
            return 0;
        }
    }
    if (st == SKV_ERR_OUT_OF_MEMORY || st == SKV_ERR_INTERNAL) {
        fprintf(stderr, "\nskv tune: %s: %s\n", skv_status_str(st), skv_last_error());
        return -1;
    }
    if (st != SKV_OK) {
        snprintf(why, nwhy, "decode: %s: %s", skv_status_str(st), skv_last_error());
        return 0;
    }
    qsort(times, runs, sizeof *times, tool_cmp_double);
    *median = times[runs / 2];
    return 1;
}

/* Tunes one class: 0 tuned (r filled), -1 failed (message printed). */
static int tune_class(skv_context *ctx, const tune_opts *o, double t_start, class_result *r)
{
    const int tier = r->tier;
    const uint32_t H = o->kv_heads, QH = o->q_heads, D = o->head_dim, P = 64, chunk = 2048;
    const size_t row = (size_t)H * D, n_out = (size_t)QH * D;
    int rc = -1;
    skv_cache *cache = NULL;
    float *k = malloc((size_t)o->tokens * row * sizeof *k), *v = malloc((size_t)o->tokens * row * sizeof *v);
    uint16_t *kh = malloc((size_t)chunk * row * 2), *vh = malloc((size_t)chunk * row * 2);
    int32_t *pos = malloc(chunk * sizeof *pos);
    float *q = malloc(n_out * sizeof *q), *out = malloc(n_out * sizeof *out), *vmean = malloc(row * sizeof *vmean);
    double *ref = malloc(n_out * sizeof *ref), *def_out = malloc(n_out * sizeof *def_out);
    double *times = calloc(o->runs, sizeof *times);
    if (!k || !v || !kh || !vh || !pos || !q || !out || !vmean || !ref || !def_out || !times) {
        fprintf(stderr, "\nskv tune: out of memory for %llu tokens\n", (unsigned long long)o->tokens);
        goto fail;
    }
    /* Keys: unit normals around a mean with a few larger channels (logits spread over a
     * few units: every token weighs, none alone). Values: normals around a mean per
     * (kv-head, channel), as model values have; with zero-mean values the output of a
     * long context nearly cancels out and its relative error is the float rounding of the
     * terms, not the variant's. All fp16. */
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ ((uint64_t)tier << 32) ^ D;
    for (size_t i = 0; i < row; i += 2) {
        gauss2(&seed, &vmean[i], &vmean[i + 1]);
        vmean[i] *= 0.5f, vmean[i + 1] *= 0.5f;
    }
    for (size_t i = 0; i < (size_t)o->tokens * row; i += 2) {
        float a, b, c, d;
        gauss2(&seed, &a, &b);
        gauss2(&seed, &c, &d);
        const uint32_t dim = (uint32_t)(i % D);
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(a + (dim % 13 == 0 ? 1.5f : 0.25f)));
        k[i + 1] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(b + ((dim + 1) % 13 == 0 ? 1.5f : 0.25f)));
        v[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(c * 0.7f + vmean[i % row]));
        v[i + 1] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(d * 0.7f + vmean[(i + 1) % row]));
    }
    for (size_t i = 0; i < n_out; i += 2)
        gauss2(&seed, &q[i], &q[i + 1]);
    const float scale = 1.0f / sqrtf((float)D);

    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1;
    d.q_heads = QH;
    d.kv_heads = H;
    d.head_dim = D;
    d.page_tokens = P;
    d.tiers = (1u << SKV_TIER_F16) | (1u << tier);
    const uint64_t pages = (o->tokens + P - 1) / P * H;
    d.device_budget_bytes = (2 * pages + 64) * ((uint64_t)P * (4 * D + 4)); /* F16 first, then the tier's copy */
    CHECK(skv_cache_create(ctx, &d, &cache));
    skv_seq_id seq;
    CHECK(skv_seq_create(cache, &seq));
    for (uint64_t t = 0; t < o->tokens; t += chunk) {
        const uint32_t n = o->tokens - t < chunk ? (uint32_t)(o->tokens - t) : chunk;
        for (size_t i = 0; i < (size_t)n * row; i++) {
            kh[i] = skv_ref_f32_to_f16(k[t * row + i]);
            vh[i] = skv_ref_f32_to_f16(v[t * row + i]);
        }
        for (uint32_t i = 0; i < n; i++)
            pos[i] = (int32_t)(t + i);
        CHECK(skv_append(cache, seq, 0, n, SKV_F16, kh, vh, pos));
        tool_progress("tune decode %s: filling %3.0f%%", tool_tier_names[tier], 100.0 * (double)(t + n) / (double)o->tokens);
    }
    if (tier != SKV_TIER_F16)
        CHECK(skv_seq_quantize(cache, seq, 0, o->tokens, (skv_tier)tier));
    tool_progress("tune decode %s: fp64 reference", tool_tier_names[tier]);
    if (decode_as_held(tier, o, k, v) != 0 || skv_ref_attention_decode(q, k, v, o->tokens, QH, H, D, scale, ref) != 0) {
        fprintf(stderr, "\nskv tune: out of memory for the reference\n");
        goto fail;
    }

    /* The candidates: the default first, then a deterministic draw of the others (those
     * that are the default under another name left out), in the drawn order. */
    skv_tuning_info info = {.struct_size = sizeof info};
    CHECK(skv_context_tuning(ctx, (skv_tier)tier, D, QH / H, &info));
    skv_decode_params all[MAX_CANDIDATES], list[MAX_CANDIDATES];
    const int n_all = candidates(tier, &info.builtin, all);
    int n = 0;
    for (int i = 0; i < n_all; i++)
        if (!same_params(&all[i], &info.builtin))
            list[n++] = all[i];
    uint64_t draw = 0xC0FFEE123456789ull + (uint64_t)tier * 0x9E3779B97F4A7C15ull + D * 131u + QH / H;
    for (int i = n - 1; i > 0; i--) {
        const int j = (int)(xorshift(&draw) % (uint64_t)(i + 1));
        skv_decode_params t = list[i];
        list[i] = list[j];
        list[j] = t;
    }
    const int n_try = (int)ceil(o->fraction * n - 1e-9);
    r->total = n + 1;
    char seen[MAX_CANDIDATES + 1][96]; /* variants measured, by the name they ran as */
    skv_decode_params ran_as[MAX_CANDIDATES + 1];
    double first_ms[MAX_CANDIDATES + 1];
    int n_seen = 0;
    printf("decode %s: %d candidates, trying %d\n", tool_tier_names[tier], n + 1, n_try + 1);
    fflush(stdout);
    for (int c = 0; c <= n_try; c++) {
        if (c > 0 && o->budget_s >= 0 && tool_now_s() - t_start > o->budget_s) {
            r->cut = 1;
            printf("  budget of %.0f s reached: %d of %d candidates tried\n", o->budget_s, r->tried, n_try + 1);
            break;
        }
        const skv_decode_params *p = c == 0 ? &info.builtin : &list[c - 1];
        char asked[96], name[96], why[1024] = "";
        if (c > 0)
            tool_variant_name(p, tier, asked, sizeof asked);
        else
            snprintf(asked, sizeof asked, "default");
        if (c > 0) {
            char best[96];
            tool_variant_name(&r->best, r->tier, best, sizeof best);
            tool_progress("tune decode %s d%u g%u: candidate %d/%d %s, best so far %s %.3f ms", tool_tier_names[tier], D,
                          QH / H, c + 1, n_try + 1, asked, best, r->best_ms);
        } else {
            tool_progress("tune decode %s d%u g%u: candidate 1/%d default", tool_tier_names[tier], D, QH / H, n_try + 1);
        }
        skv_decode_params used;
        double ms = 0, err = 0;
        const int ran = try_candidate(cache, tier, seq, p, q, scale, n_out, out, ref, c ? def_out : NULL, o->runs, times,
                                      &used, &ms, &err, why, sizeof why);
        if (ran < 0)
            goto fail;
        r->tried++;
        if (ran == 0 && c == 0) {
            tool_progress("");
            fprintf(stderr, "skv tune: decode %s: the default variant fails the check: %s\n", tool_tier_names[tier], why);
            goto fail;
        }
        if (ran == 0) {
            r->rejected++;
            tool_progress("");
            printf("  rejected %s: %s\n", asked, why);
            fflush(stdout);
            continue;
        }
        tool_variant_name(&used, tier, name, sizeof name);
        int dup = 0;
        for (int i = 0; i < n_seen; i++)
            dup |= strcmp(seen[i], name) == 0;
        if (dup)
            continue; /* fitted to the device it is one already measured */
        ran_as[n_seen] = used;
        first_ms[n_seen] = ms;
        snprintf(seen[n_seen++], sizeof seen[0], "%s", name);
        if (c == 0) {
            for (size_t i = 0; i < n_out; i++)
                def_out[i] = out[i];
            r->def = r->best = used;
            r->def_ms = r->best_ms = ms;
            r->ref_err = err;
            tool_progress("");
            printf("  default %s: %.3f ms, %.2g from the fp64 reference\n", name, ms, err);
            fflush(stdout);
        } else if (ms < r->best_ms) {
            r->best = used;
            r->best_ms = ms;
        }
    }
    /* One pass is one sample of a noisy machine: the default and the CONFIRM fastest
     * others are timed again in CONFIRM_ROUNDS interleaved rounds, and a candidate
     * replaces the default only when the median of its rounds beats the default's by
     * CONFIRM_MARGIN (so a tuned entry is never slower than the default by chance). */
    int order[CONFIRM + 1], n_conf = 1;
    order[0] = 0;
    for (int m = 0; m < CONFIRM; m++) {
        int pick = -1;
        for (int i = 1; i < n_seen; i++) {
            int taken = 0;
            for (int j = 1; j < n_conf; j++)
                taken |= order[j] == i;
            if (!taken && (pick < 0 || first_ms[i] < first_ms[pick]))
                pick = i;
        }
        if (pick >= 0)
            order[n_conf++] = pick;
    }
    if (n_conf > 1) {
        double rounds[CONFIRM + 1][CONFIRM_ROUNDS];
        for (int round = 0; round < CONFIRM_ROUNDS; round++)
            for (int m = 0; m < n_conf; m++) {
                const int i = order[(m + round) % n_conf]; /* a different order each round */
                const int slot = (m + round) % n_conf;
                skv_decode_params used;
                double ms = 0, err = 0;
                char why[1024] = "";
                tool_progress("tune decode %s: confirming, round %d/%d, %s", tool_tier_names[tier], round + 1,
                              CONFIRM_ROUNDS, seen[i]);
                const int ran = try_candidate(cache, tier, seq, &ran_as[i], q, scale, n_out, out, ref,
                                              i ? def_out : NULL, o->runs, times, &used, &ms, &err, why, sizeof why);
                if (ran < 0)
                    goto fail;
                rounds[slot][round] = ran ? ms : INFINITY;
            }
        double med[CONFIRM + 1];
        for (int m = 0; m < n_conf; m++) {
            qsort(rounds[m], CONFIRM_ROUNDS, sizeof rounds[m][0], tool_cmp_double);
            med[m] = rounds[m][CONFIRM_ROUNDS / 2];
        }
        int win = 0;
        for (int m = 1; m < n_conf; m++)
            if (med[m] < med[win])
                win = m;
        if (win != 0 && !(med[win] < med[0] * (1.0 - CONFIRM_MARGIN)))
            win = 0;
        r->def_ms = med[0];
        r->best = ran_as[order[win]];
        r->best_ms = med[win];
        tool_progress("");
        printf("  confirmed over %d rounds: default %.3f ms, %s %.3f ms%s\n", CONFIRM_ROUNDS, med[0],
               seen[order[win ? win : (n_conf > 1 ? 1 : 0)]], med[win ? win : 1],
               win ? "" : " (not faster by the margin: the default stays)");
    }
    tool_progress("");
    rc = 0;
fail:
    skv_cache_destroy(cache);
    free(k), free(v), free(kh), free(vh), free(pos), free(q), free(out), free(vmean), free(ref), free(def_out),
        free(times);
    return rc;
}

/* ---- the command --------------------------------------------------------------------- */

int cmd_tune(int argc, char **argv)
{
    tune_opts o = {.n_tiers = 4, .tiers = {SKV_TIER_F16, SKV_TIER_A4V8, SKV_TIER_A3V4, SKV_TIER_A2V2},
                   .head_dim = 128, .q_heads = 32, .kv_heads = 8, .runs = 10, .tokens = 16384, .fraction = 1.0,
                   .budget_s = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--force") == 0) {
            o.force = 1;
            continue;
        }
        if (!v)
            return tool_usage_error(usage_tune, "tune: '%s' needs a value or is unknown", a);
        uint32_t u = 0;
        if (strcmp(a, "--kernels") == 0) {
            char name[80];
            if (parse_kernels(v, name, sizeof name) != 0)
                return tool_usage_error(usage_tune, "tune: unknown kernel '%s' in --kernels (kernels: decode)", name);
        } else if (strcmp(a, "--tiers") == 0)
            bad = parse_tiers(v, &o);
        else if (strcmp(a, "--head-dim") == 0)
            bad = tool_parse_u32(v, 16, 256, &o.head_dim);
        else if (strcmp(a, "--q-heads") == 0)
            bad = tool_parse_u32(v, 1, 65536, &o.q_heads);
        else if (strcmp(a, "--kv-heads") == 0)
            bad = tool_parse_u32(v, 1, 1024, &o.kv_heads);
        else if (strcmp(a, "--tokens") == 0)
            bad = tool_parse_u32(v, 16, 1u << 18, &u), o.tokens = u;
        else if (strcmp(a, "--runs") == 0)
            bad = tool_parse_u32(v, 1, 100000, &o.runs);
        else if (strcmp(a, "--fraction") == 0)
            bad = parse_double(v, 0.0, 1.0, 1, &o.fraction);
        else if (strcmp(a, "--budget-seconds") == 0)
            bad = parse_double(v, 0.0, 1e9, 0, &o.budget_s);
        else if (strcmp(a, "--output") == 0)
            bad = !*v || strcmp(v, "-") == 0, o.output = v;
        else if (strcmp(a, "--device") == 0)
            o.device = v;
        else
            return tool_usage_error(usage_tune, "tune: unknown option '%s'", a);
        if (bad)
            return tool_usage_error(usage_tune, "tune: bad value '%s' for %s", v, a);
        i++;
    }
    if (o.q_heads % o.kv_heads != 0 || o.q_heads / o.kv_heads > 64)
        return tool_usage_error(usage_tune, "tune: --q-heads %u is not 1 to 64 times --kv-heads %u", o.q_heads,
                                o.kv_heads);
    const uint32_t group = o.q_heads / o.kv_heads;

    int rc = 1;
    skv_context *ctx = NULL;
    cJSON *root = NULL;
    char *text = NULL;
    char path[1024];
    class_result res[SKV_TIER_COUNT];
    memset(res, 0, sizeof res);
    skv_device_profile prof;
    const double t_start = tool_now_s();

    /* The database as the library reads it: where it is and whether it is valid. */
    if (open_with_db(o.output, o.device, 0, &ctx, &prof) != SKV_OK)
        goto done;
    if (o.output)
        snprintf(path, sizeof path, "%s", o.output);
    else
        TOOL_CHECK("tune", done, skv_context_tuning_path(ctx, path, sizeof path));
    if (!path[0]) {
        fprintf(stderr, "skv tune: no tuning database location (no program cache directory): give --output or set "
                        "SKV_TUNING_DB\n");
        goto done;
    }
    skv_tuning_info info = {.struct_size = sizeof info};
    TOOL_CHECK("tune", done, skv_context_tuning(ctx, SKV_TIER_F16, o.head_dim, group, &info));
    skv_context_destroy(ctx);
    ctx = NULL;
    const int got = read_text(path, &text);
    if (got < 0) {
        fprintf(stderr, "skv tune: cannot read %s (or it is over %u bytes)\n", path, MAX_DB_BYTES);
        goto done;
    }
    if (got == 0 && !info.note[0])
        root = cJSON_Parse(text);
    if (got == 0 && !root && !o.force) {
        fprintf(stderr, "skv tune: %s is not a valid skv-tuning version 1 database (%s); --force replaces it\n", path,
                info.note[0] ? info.note : "not valid JSON");
        goto done;
    }
    const int replacing = !root && got == 0;
    if (!root) {
        root = cJSON_CreateObject();
        if (!root || !cJSON_AddStringToObject(root, "format", "skv-tuning") ||
            !cJSON_AddNumberToObject(root, "version", 1) || !cJSON_AddArrayToObject(root, "entries")) {
            fprintf(stderr, "skv tune: out of memory\n");
            goto done;
        }
    }
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(root, "entries");

    /* Every candidate is measured against the same default, the built-in entry's variant
     * (skv_tuning_info.builtin), whatever the database holds. */
    if (tool_open_context("tune", o.device, 1, &ctx, &prof) != SKV_OK)
        goto done;
    printf("device: %s (%s), driver %s, architecture %s [%s]\n", prof.name, prof.platform, prof.driver_version,
           prof.architecture, skv_vendor_class_str(prof.vendor_class));
    printf("tuning decode: head_dim %u, %u q-heads / %u kv-heads (group %u), %llu tokens, median of %u runs\n",
           o.head_dim, o.q_heads, o.kv_heads, group, (unsigned long long)o.tokens, o.runs);
    printf("database: %s%s%s\n\n", path, replacing ? ", replacing a file that is not one: " : "",
           replacing ? (info.note[0] ? info.note : "not valid JSON") : "");
    fflush(stdout);
    int failed = 0;
    for (int i = 0; i < o.n_tiers; i++) {
        class_result *r = &res[i];
        r->tier = o.tiers[i];
        if (!o.force && has_class_entry(entries, &prof, r->tier, o.head_dim, group)) {
            r->state = CLASS_SKIPPED;
            printf("decode %s: already tuned for this device (--force tunes it again)\n", tool_tier_names[r->tier]);
            continue;
        }
        if (o.budget_s >= 0 && tool_now_s() - t_start > o.budget_s) {
            r->state = CLASS_OVER_BUDGET;
            printf("decode %s: not started, the budget of %.0f s is spent\n", tool_tier_names[r->tier], o.budget_s);
            continue;
        }
        if (tune_class(ctx, &o, t_start, r) != 0) {
            r->state = CLASS_FAILED;
            failed = 1;
            continue;
        }
        r->state = CLASS_TUNED;
        if (store_class(root, path, &prof, &o, r) != 0) {
            fprintf(stderr, "skv tune: cannot write %s\n", path);
            goto done;
        }
    }

    printf("\n%-6s %-5s %8s %5s %7s  %-32s %9s  %-32s %9s %8s\n", "kernel", "tier", "head_dim", "group", "tried",
           "default", "ms", "tuned", "ms", "speedup");
    for (int i = 0; i < o.n_tiers; i++) {
        const class_result *r = &res[i];
        if (r->state != CLASS_TUNED) {
            printf("%-6s %-5s %8u %5u  %s\n", "decode", tool_tier_names[r->tier], o.head_dim, group,
                   r->state == CLASS_SKIPPED   ? "already tuned (kept)"
                   : r->state == CLASS_FAILED  ? "failed"
                                               : "over budget (left out)");
            continue;
        }
        char def[96], best[96], tried[32];
        tool_variant_name(&r->def, r->tier, def, sizeof def);
        tool_variant_name(&r->best, r->tier, best, sizeof best);
        snprintf(tried, sizeof tried, "%d/%d", r->tried, r->total);
        printf("%-6s %-5s %8u %5u %7s  %-32s %9.3f  %-32s %9.3f %7.2fx%s\n", "decode", tool_tier_names[r->tier], o.head_dim,
               group, tried, def, r->def_ms, same_params(&r->def, &r->best) ? "(default)" : best, r->best_ms,
               r->def_ms / r->best_ms, r->cut ? "  (budget)" : "");
    }

    /* What a context reading the written file now gives each class. */
    skv_context_destroy(ctx);
    ctx = NULL;
    if (open_with_db(path, o.device, 0, &ctx, &prof) != SKV_OK)
        goto done;
    printf("\n");
    for (int i = 0; i < o.n_tiers; i++) {
        const class_result *r = &res[i];
        if (r->state != CLASS_TUNED && r->state != CLASS_SKIPPED)
            continue;
        skv_tuning_info got_info = {.struct_size = sizeof got_info};
        TOOL_CHECK("tune", done, skv_context_tuning(ctx, (skv_tier)r->tier, o.head_dim, group, &got_info));
        char now[96], want[96] = "";
        tool_variant_name(&got_info.decode, r->tier, now, sizeof now);
        if (r->state == CLASS_TUNED)
            tool_variant_name(&r->best, r->tier, want, sizeof want);
        const int ok = got_info.match == SKV_TUNING_EXACT && got_info.from_file && !got_info.note[0] &&
                       (r->state != CLASS_TUNED || strcmp(now, want) == 0);
        printf("verify decode %s head_dim %u group %u: match=%s from %s (entry \"%s\"): %s%s%s%s\n",
               tool_tier_names[r->tier], o.head_dim, group, skv_tuning_match_str(got_info.match), got_info.source,
               got_info.entry, now, ok ? "" : "  MISMATCH", got_info.note[0] ? "; " : "", got_info.note);
        if (!ok) {
            fprintf(stderr, "skv tune: %s does not give decode %s this device's tuned variant %s\n", path,
                    tool_tier_names[r->tier], want[0] ? want : "");
            failed = 1;
        }
    }
    rc = failed;
done:
    skv_context_destroy(ctx);
    cJSON_Delete(root);
    free(text);
    return rc;
}
