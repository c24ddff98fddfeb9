/* skv_cache: geometry, budgets, pools, sequences (create, free, fork with copy-on-write
 * page sharing), positions and statistics. Appends, page moves and attention are in
 * append.c, transfer.c and attention.c. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cache_internal.h"

void skv_cache_desc_init(skv_cache_desc *desc)
{
    if (!desc)
        return;
    memset(desc, 0, sizeof *desc);
    desc->struct_size = sizeof *desc;
    desc->page_tokens = 64;
    desc->tiers = 1u << SKV_TIER_F16;
    desc->retention = SKV_RETENTION_NONE;
    desc->scorer = SKV_SCORER_NONE;
    desc->score_window = 4096;
    desc->n_sink = 4;
    desc->rope.scaling = 1.0f;
    desc->budget_ratio = 1.0f;
    desc->recent_window = 128;
    desc->slack = 128;
    desc->budget_rule = SKV_BUDGET_UNIFORM;
}

static int is_pow2(uint32_t x) { return x && !(x & (x - 1)); }

static skv_status validate(skv_context *ctx, const skv_cache_desc *d)
{
    char *err = ctx->error;
    const char *fn = "skv_cache_create";
    if (d->struct_size != sizeof *d)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc->struct_size is %zu, expected %zu (call skv_cache_desc_init)",
                         fn, d->struct_size, sizeof *d);
    if (d->layers == 0 || d->layers > 4096)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layers is %u, must be in 1..4096", fn, d->layers);
    if (d->kv_heads == 0 || d->kv_heads > 1024)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: kv_heads is %u, must be in 1..1024", fn, d->kv_heads);
    if (d->q_heads == 0 || d->q_heads % d->kv_heads != 0 || d->q_heads / d->kv_heads > 64)
        return skvi_fail(err, SKV_ERR_INVALID_ARG,
                         "%s: q_heads is %u, must be a multiple of kv_heads (%u) with at most 64 q-heads per kv-head",
                         fn, d->q_heads, d->kv_heads);
    if (d->head_dim != 64 && d->head_dim != 128 && d->head_dim != 256)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: head_dim is %u, must be 64, 128 or 256", fn, d->head_dim);
    if (!is_pow2(d->page_tokens) || d->page_tokens < 16 || d->page_tokens > 256)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: page_tokens is %u, must be a power of two in 16..256",
                         fn, d->page_tokens);
    if (!(d->tiers & (1u << SKV_TIER_F16)) || (d->tiers >> SKV_TIER_COUNT))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: tiers is 0x%x, must include F16 (bit 0) and only bits 0..%d",
                         fn, d->tiers, SKV_TIER_COUNT - 1);
    if ((unsigned)d->scorer > SKV_SCORER_OBSERVED)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: scorer %d is not an skv_scorer", fn, (int)d->scorer);
    if (d->scorer == SKV_SCORER_MANIFOLD_WINDOWED && d->score_window == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: score_window is 0", fn);
    if (d->scorer == SKV_SCORER_TRIATTENTION) { /* its inputs are checked here, never at decode */
        if (!(d->rope.theta > 1.0f) || !(d->rope.scaling > 0.0f))
            return skvi_fail(err, SKV_ERR_INVALID_ARG,
                             "%s: the triattention scorer needs rope.theta (> 1) and rope.scaling (> 0)", fn);
        if (d->rope.rotary_dims != d->head_dim)
            return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                             "%s: the triattention scorer needs rope.rotary_dims = head_dim (%u), got %u", fn,
                             d->head_dim, d->rope.rotary_dims);
        if (!d->query_mean || !d->query_abs)
            return skvi_fail(err, SKV_ERR_INVALID_ARG,
                             "%s: the triattention scorer needs query statistics (query_mean and query_abs)", fn);
    }
    if ((unsigned)d->retention > SKV_RETENTION_RDR)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: retention %d is not an skv_retention", fn, (int)d->retention);
    if (d->retention == SKV_RETENTION_RDR) {
        if (d->scorer == SKV_SCORER_NONE)
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: RDR retention needs a scorer", fn);
        if (!(d->budget_ratio > 0.0f && d->budget_ratio <= 1.0f))
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: budget_ratio %g is not in (0, 1]", fn, d->budget_ratio);
        if ((unsigned)d->budget_rule > SKV_BUDGET_ADAKV)
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: budget_rule %d is not a budget rule", fn, (int)d->budget_rule);
    }
    if (d->device_budget_bytes > ctx->profile.global_mem_bytes)
        return skvi_fail(err, SKV_ERR_INVALID_ARG,
                         "%s: device_budget_bytes %llu exceeds the device's %llu bytes of memory", fn,
                         (unsigned long long)d->device_budget_bytes, (unsigned long long)ctx->profile.global_mem_bytes);
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psize > 0 && d->host_budget_bytes > (uint64_t)pages * (uint64_t)psize)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: host_budget_bytes %llu exceeds the machine's %llu bytes of memory",
                         fn, (unsigned long long)d->host_budget_bytes, (unsigned long long)pages * (uint64_t)psize);
    return SKV_OK;
}

/* Fits decode parameters to the device and the cache, or says why they cannot run: a
 * GROUP tile shrinks to the largest power of two that the device's work-group size and
 * local memory allow, and must still cover the D/2 value pairs and the G q-heads. */
static int fit_params(const skv_cache *c, skv_decode_params *p, char *why, size_t n)
{
    const skv_context *ctx = c->ctx;
    const uint32_t D = c->desc.head_dim, G = c->group;
    if (p->schedule == SKV_SCHEDULE_LANES) {
        if (p->tile < 16) /* chunks hold whole blocks of up to 16 slots */
            p->tile = 16;
        return 1;
    }
    const uint32_t min_tile = D / 2 > G ? D / 2 : G;
    for (uint32_t t = p->tile; t >= min_tile && t >= 1; t /= 2) {
        uint64_t local = 4ull * ((uint64_t)G * D + (uint64_t)G * t + t + 3 * G);
        if (t <= ctx->profile.max_work_group_size && local + 1024 <= ctx->profile.local_mem_bytes) {
            p->tile = t;
            return 1;
        }
    }
    snprintf(why, n, "group schedule: %u q-heads per kv-head at head_dim %u need a tile of at least %u that the "
             "device's work-group size (%zu) and local memory (%llu bytes) allow, asked for %u",
             G, D, min_tile, ctx->profile.max_work_group_size, (unsigned long long)ctx->profile.local_mem_bytes,
             p->tile);
    return 0;
}

/* The -D options of a tier's decode kernel with parameters p; `keep_logits` adds OBSERVE
 * (every logit kept). */
static void decode_defines(const skv_cache *c, skv_tier tier, const skv_decode_params *p, int keep_logits,
                           char *defs, size_t size)
{
    const skv_cache_desc *d = &c->desc;
    char ada[256] = "", lanes[64] = "";
    uint32_t seg = p->tile / c->group, seg_pow2 = 1;
    while (seg_pow2 < seg)
        seg_pow2 *= 2;
    if (tier != SKV_TIER_F16)
        skvi_ada_defines(c, tier, ada, sizeof ada);
    if (p->schedule == SKV_SCHEDULE_LANES)
        snprintf(lanes, sizeof lanes, " -DDECODE_CPU -DLANES=%u -DLANE_W=%uu", p->lanes, p->lanes);
    if (p->schedule == SKV_SCHEDULE_LANES && tier == SKV_TIER_F16)
        snprintf(lanes + strlen(lanes), sizeof lanes - strlen(lanes), " -DKB=%u", p->f16_slots);
    snprintf(defs, size, "-DD=%u -DP=%u -DG=%u -DTILE=%u -DSEG_POW2=%u%s%s%s%s", d->head_dim, d->page_tokens,
             c->group, p->tile, seg_pow2, lanes, keep_logits ? " -DOBSERVE" : "", tier != SKV_TIER_F16 ? " -DADA " : "",
             ada);
}

/* A tier's decode program (cl/decode.h): the shared part, the tier's access to its pages,
 * the schedule. */
static const char *decode_program(skv_tier tier, const skv_decode_params *p)
{
    const int ada = tier != SKV_TIER_F16, lanes = p->schedule == SKV_SCHEDULE_LANES;
    return ada ? (lanes ? "decode.h+decode_ada.h+decode_cpu.cl" : "decode.h+decode_ada.h+decode_gpu.cl")
               : (lanes ? "decode.h+decode_f16.h+decode_cpu.cl" : "decode.h+decode_f16.h+decode_gpu.cl");
}

/* A tier's decode kernel with parameters p, checked against what the built kernel
 * allows (a GROUP kernel needs `tile` work-items and its local memory). */
static skv_status decode_kernel(skv_cache *c, skv_tier tier, const skv_decode_params *p, int keep_logits,
                                cl_kernel *out)
{
    char defs[512];
    decode_defines(c, tier, p, keep_logits, defs, sizeof defs);
    const int lanes = p->schedule == SKV_SCHEDULE_LANES;
    skv_status st = skvi_kernel_create(c->ctx, decode_program(tier, p), defs, lanes ? "decode_cpu" : "decode_gpu", out);
    if (st != SKV_OK || lanes)
        return st;
    size_t wg = 0;
    cl_ulong local = 0;
    cl_int e = clGetKernelWorkGroupInfo(*out, c->ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    if (e == CL_SUCCESS)
        e = clGetKernelWorkGroupInfo(*out, c->ctx->device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    if (e == CL_SUCCESS && wg >= p->tile && local <= c->ctx->profile.local_mem_bytes)
        return SKV_OK;
    clReleaseKernel(*out);
    *out = NULL;
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "clGetKernelWorkGroupInfo");
    return skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED,
                     "the built kernel runs at most %zu work-items with %llu bytes of local memory, the tile is %u", wg,
                     (unsigned long long)local, p->tile);
}

/* The kernels one tier's decode runs with one set of parameters: decode itself and,
 * for ADA tiers, the query tables in the layout that variant reads. */
typedef struct decode_kernels {
    cl_kernel decode, query;
    skv_decode_params params; /* fitted */
} decode_kernels;

static void decode_kernels_release(decode_kernels *k)
{
    if (k->decode)
        clReleaseKernel(k->decode);
    if (k->query)
        clReleaseKernel(k->query);
    k->decode = k->query = NULL;
}

/* Makes k the tier's kernels, releasing those it replaces; a logits kernel of the old
 * variant is rebuilt when next asked for. */
static void decode_kernels_commit(skv_cache *c, skv_tier tier, decode_kernels *k)
{
    decode_kernels old = {c->k_decode[tier], c->k_query[tier], {0}};
    decode_kernels_release(&old);
    c->k_decode[tier] = k->decode;
    c->k_query[tier] = k->query;
    c->decode[tier] = k->params;
    if (c->k_logits[tier]) {
        clReleaseKernel(c->k_logits[tier]);
        c->k_logits[tier] = NULL;
    }
    memset(k, 0, sizeof *k);
}

/* Builds a tier's decode kernels with parameters `want`, fitted to the device, and the
 * kernels that share its page layout (slot_copy, observe) if the cache has none yet. */
static skv_status build_decode_kernels(skv_cache *c, skv_tier tier, const skv_decode_params *want,
                                       decode_kernels *out)
{
    const skv_cache_desc *d = &c->desc;
    memset(out, 0, sizeof *out);
    skv_decode_params p = *want;
    char why[400];
    if (!fit_params(c, &p, why, sizeof why))
        return skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED, "%s", why);
    skv_status st = decode_kernel(c, tier, &p, d->scorer == SKV_SCORER_OBSERVED, &out->decode);
    if (st == SKV_OK && tier != SKV_TIER_F16) {
        char defs[400], ad[256];
        skvi_ada_defines(c, tier, ad, sizeof ad);
        snprintf(defs, sizeof defs, "%s -DLANE_W=%uu", ad, p.schedule == SKV_SCHEDULE_LANES ? p.lanes : 16);
        st = skvi_kernel_create(c->ctx, "ada_query.cl", defs, "ada_query", &out->query);
    }
    if (st == SKV_OK && d->retention == SKV_RETENTION_RDR && !c->k_slot_copy[tier]) {
        char sd[600], ad[256] = "";
        if (tier != SKV_TIER_F16)
            skvi_ada_defines(c, tier, ad, sizeof ad);
        snprintf(sd, sizeof sd, "-DD=%u -DP=%u %s%s", d->head_dim, d->page_tokens, ad, tier != SKV_TIER_F16 ? " -DADA" : "");
        st = skvi_kernel_create(c->ctx, "slot_copy.cl", sd, "slot_copy", &c->k_slot_copy[tier]);
    }
    if (st == SKV_OK && d->scorer == SKV_SCORER_OBSERVED && !c->k_observe[tier]) {
        char defs[512];
        decode_defines(c, tier, &p, 1, defs, sizeof defs);
        st = skvi_kernel_create(c->ctx, "observe.cl", defs, "observe", &c->k_observe[tier]);
    }
    if (st != SKV_OK)
        decode_kernels_release(out);
    out->params = p;
    return st;
}

/* A tier's decode kernels from the tuning database's parameters; a variant the device
 * cannot build or run falls back to the built-in choice, then to the most portable one
 * (LANES 4: plain float4 code, no local memory), the reasons in the last-error text. */
static skv_status choose_decode_kernels(skv_cache *c, skv_tier tier)
{
    skv_tuning_info info;
    skvi_decode_params_lookup(c->ctx, tier, c->desc.head_dim, c->group, &info);
    skv_decode_params cand[3] = {info.decode, info.builtin, {SKV_SCHEDULE_LANES, 4, 256, 4, info.builtin.f16_slots}};
    char reasons[SKVI_ERROR_MAX / 2] = "";
    skv_status st = SKV_ERR_INTERNAL;
    decode_kernels k;
    for (int i = 0; i < 3; i++) {
        if (i > 0 && memcmp(&cand[i], &cand[i - 1], sizeof cand[i]) == 0)
            continue;
        st = build_decode_kernels(c, tier, &cand[i], &k);
        if (st == SKV_OK)
            break;
        if (st != SKV_ERR_BUILD && st != SKV_ERR_UNSUPPORTED)
            return st; /* out of memory, ...: no fallback hides it */
        size_t used = strlen(reasons);
        snprintf(reasons + used, sizeof reasons - used, "%s%s %s (lanes %u, tile %u): %.160s", used ? "; " : "",
                 i == 0 ? "the tuned variant" : i == 1 ? "the built-in variant" : "the portable variant",
                 skv_schedule_str(cand[i].schedule), cand[i].lanes, cand[i].tile, c->ctx->error);
    }
    if (st == SKV_OK) {
        decode_kernels_commit(c, tier, &k);
        if (reasons[0])
            skvi_fail(c->ctx->error, SKV_OK, "skv_cache_create: %s decode fell back: %s", skvi_tiers[tier].name,
                      reasons);
    } else {
        skvi_fail(c->ctx->error, st, "skv_cache_create: no %s decode variant runs on this device: %s",
                  skvi_tiers[tier].name, reasons);
    }
    return st;
}

skv_status skvi_cache_logits_kernel(skv_cache *c, skv_tier tier, cl_kernel *out)
{
    if (c->desc.scorer == SKV_SCORER_OBSERVED) { /* the decode kernels keep logits already */
        *out = c->k_decode[tier];
        return SKV_OK;
    }
    if (!c->k_logits[tier]) {
        skv_status st = decode_kernel(c, tier, &c->decode[tier], 1, &c->k_logits[tier]);
        if (st != SKV_OK)
            return st;
        c->ws.objects++;
    }
    *out = c->k_logits[tier];
    return SKV_OK;
}

skv_status skvi_cache_observe_kernel(skv_cache *c, skv_tier tier, cl_kernel *out)
{
    if (!c->k_observe[tier]) {
        char defs[512];
        decode_defines(c, tier, &c->decode[tier], 1, defs, sizeof defs);
        skv_status st = skvi_kernel_create(c->ctx, "observe.cl", defs, "observe", &c->k_observe[tier]);
        if (st != SKV_OK)
            return st;
        c->ws.objects++;
    }
    *out = c->k_observe[tier];
    return SKV_OK;
}

static skv_status build_kernels(skv_cache *c)
{
    const skv_cache_desc *d = &c->desc;
    char defs[256];
    snprintf(defs, sizeof defs, "-DD=%u -DP=%u", d->head_dim, d->page_tokens);
    skv_status st = skvi_kernel_create(c->ctx, "append_f16.cl", defs, "append_f16", &c->k_append);
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++)
        if (d->tiers & (1u << t))
            st = choose_decode_kernels(c, (skv_tier)t);
    snprintf(defs, sizeof defs, "-DD=%u -DG=%u", d->head_dim, c->group);
    if (st == SKV_OK)
        st = skvi_kernel_create(c->ctx, "decode_merge.cl", defs, "decode_merge", &c->k_merge);
    return st;
}

skv_status skv_cache_set_decode_params(skv_cache *c, const skv_decode_params *params)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_cache_set_decode_params: cache is NULL");
    char why[160];
    if (params && !skvi_decode_params_check(params, 1, why, sizeof why))
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_cache_set_decode_params: %s", why);
    decode_kernels k[SKV_TIER_COUNT];
    memset(k, 0, sizeof k);
    skv_status st = skvi_finish(c->ctx); /* no enqueued decode still uses the old kernels' tables */
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        if (!(c->desc.tiers & (1u << t)))
            continue;
        skv_tuning_info info;
        skvi_decode_params_lookup(c->ctx, (skv_tier)t, c->desc.head_dim, c->group, &info);
        if (params)
            skvi_decode_params_merge(&info.decode, params);
        st = build_decode_kernels(c, (skv_tier)t, &info.decode, &k[t]);
        if (st != SKV_OK)
            skvi_fail(c->ctx->error, st, "skv_cache_set_decode_params: %s decode, %s (lanes %u, tile %u): %s",
                      skvi_tiers[t].name, skv_schedule_str(info.decode.schedule), info.decode.lanes, info.decode.tile,
                      skv_last_error());
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        if (st == SKV_OK && (c->desc.tiers & (1u << t)))
            decode_kernels_commit(c, (skv_tier)t, &k[t]);
        else
            decode_kernels_release(&k[t]);
    }
    return st;
}

skv_status skv_cache_decode_params(const skv_cache *c, skv_tier tier, skv_decode_params *out)
{
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_decode_params: cache or out is NULL");
    if ((unsigned)tier >= SKV_TIER_COUNT || !(c->desc.tiers & (1u << tier)))
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_cache_decode_params: tier %d is not in the cache",
                         (int)tier);
    *out = c->decode[tier];
    return SKV_OK;
}

skv_status skv_cache_create(skv_context *ctx, const skv_cache_desc *desc, skv_cache **out)
{
    skvi_clear_error();
    if (!ctx || !desc || !out)
        return skvi_fail(ctx ? ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_create: ctx, desc or out is NULL");
    *out = NULL;
    skv_status st = validate(ctx, desc);
    if (st != SKV_OK)
        return st;
    skv_cache *c = skvi_calloc(ctx->alloc, 1, sizeof *c);
    if (!c)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
    c->ctx = ctx;
    c->desc = *desc;
    c->group = desc->q_heads / desc->kv_heads;
    c->budget[SKV_MEM_DEVICE] = desc->device_budget_bytes ? desc->device_budget_bytes : ctx->profile.global_mem_bytes / 2;
    c->budget[SKV_MEM_HOST] = desc->host_budget_bytes;
    c->desc.device_budget_bytes = c->budget[SKV_MEM_DEVICE];
    uint64_t page_bytes = skvi_tier_page_bytes(SKV_TIER_F16, desc->head_dim, desc->page_tokens);
    if (c->budget[SKV_MEM_DEVICE] < page_bytes) {
        st = skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                       "skv_cache_create: device_budget_bytes %llu is smaller than one page (%llu bytes)",
                       (unsigned long long)c->budget[SKV_MEM_DEVICE], (unsigned long long)page_bytes);
        skvi_free(ctx->alloc, c);
        return st;
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            if (desc->tiers & (1u << t))
                skvi_pool_init(c, &c->pools[t][m], (skv_memory)m,
                               skvi_tier_page_bytes((skv_tier)t, desc->head_dim, desc->page_tokens));
    if (desc->scorer == SKV_SCORER_TRIATTENTION) {
        size_t n = (size_t)desc->layers * desc->q_heads * desc->head_dim;
        c->query_mean = skvi_alloc(ctx->alloc, n * sizeof(float));
        c->query_abs = skvi_alloc(ctx->alloc, n / 2 * sizeof(float));
        if (!c->query_mean || !c->query_abs) {
            st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
        } else {
            memcpy(c->query_mean, desc->query_mean, n * sizeof(float));
            memcpy(c->query_abs, desc->query_abs, n / 2 * sizeof(float));
        }
    }
    c->desc.query_mean = c->desc.query_abs = NULL; /* the caller's arrays are not kept */
    if (st == SKV_OK)
        st = skvi_ada_init(c); /* the ADA tables come before the kernels built from them */
    if (st == SKV_OK)
        st = build_kernels(c);
    if (st == SKV_OK)
        st = skvi_score_init(c);
    if (st == SKV_OK && ctx->build_list) /* a build list names what HeteroCache would build too */
        st = skvi_hetero_kernels(c);
    if (st == SKV_OK && desc->retention == SKV_RETENTION_RDR)
        st = skvi_kernel_create(ctx, "rdr.cl", NULL, "rdr_choose", &c->k_rdr_choose);
    if (st == SKV_OK && desc->retention == SKV_RETENTION_RDR) { /* work-groups of 64 where the kernel allows */
        size_t wg = 0;
        cl_int e = clGetKernelWorkGroupInfo(c->k_rdr_choose, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
        c->rdr_wg = 64;
        while (c->rdr_wg > wg && c->rdr_wg > 8)
            c->rdr_wg /= 2;
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "skv_cache_create: clGetKernelWorkGroupInfo(rdr_choose)");
        else if (c->rdr_wg > wg) /* its per-group counts need 5 work-items, 8 as a power of two */
            st = skvi_fail(ctx->error, SKV_ERR_UNSUPPORTED,
                           "skv_cache_create: rdr_choose runs at most %zu work-items per group on this device, needs 8",
                           wg);
    }
    for (int f = SKV_TIER_F16 + 1; st == SKV_OK && desc->retention == SKV_RETENTION_RDR && f < SKV_TIER_COUNT; f++)
        for (int t = f + 1; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
            if (!(desc->tiers & (1u << f)) || !(desc->tiers & (1u << t)))
                continue;
            char to[256], all[512];
            const skvi_tier_desc *fd = &skvi_tiers[f];
            skvi_ada_defines(c, (skv_tier)t, to, sizeof to);
            snprintf(all, sizeof all, "%s -DSRC_RB=%u -DSRC_AB=%u -DSRC_KW=%u -DSRC_VB=%u -DSRC_VG=%u", to,
                     fd->radius_bits, fd->angle_bits, c->ada[f].key_words, fd->value_bits, fd->value_group);
            st = skvi_kernel_create(ctx, "ada_encode.cl", all, "ada_transcode", &c->k_transcode[f][t]);
        }
    if (st != SKV_OK) {
        skv_cache_destroy(c);
        return st;
    }
    *out = c;
    return SKV_OK;
}

size_t skvi_list_count(const skv_cache *c) { return (size_t)c->desc.layers * c->desc.kv_heads * SKV_TIER_COUNT; }

skvi_pool *skvi_entry_pool(skv_cache *c, skv_tier tier, uint32_t entry)
{
    return &c->pools[tier][entry & SKVI_HOST_BIT ? SKV_MEM_HOST : SKV_MEM_DEVICE];
}

static void seq_release(skv_cache *c, skvi_seq *s)
{
    for (size_t i = 0; s->lists && i < skvi_list_count(c); i++) {
        skvi_page_list *l = &s->lists[i];
        for (uint32_t j = 0; j < l->n; j++)
            skvi_pool_unref(skvi_entry_pool(c, SKVI_LIST_TIER(i), l->ids[j]), l->ids[j] & ~SKVI_HOST_BIT);
        skvi_free(c->ctx->alloc, l->ids);
    }
    skvi_free(c->ctx->alloc, s->lists);
    skvi_free(c->ctx->alloc, s->len);
    skvi_free(c->ctx->alloc, s->next_pos);
    skvi_free(c->ctx->alloc, s->rdr_mark);
    skvi_snap_release(c, s);
    skvi_obs_release(c, s);
    skvi_hetero_release(c, s);
    skvi_calib_release(c, s);
    skvi_stats_release(c, s);
    if (s->moved)
        clReleaseEvent(s->moved);
    memset(s, 0, sizeof *s);
}

void skv_cache_destroy(skv_cache *c)
{
    if (!c)
        return;
    skvi_finish(c->ctx); /* not the public call: it would clear the caller's last error */
    for (uint32_t i = 0; i < c->seq_cap; i++)
        if (c->seqs[i].live)
            seq_release(c, &c->seqs[i]);
    skvi_free(c->ctx->alloc, c->seqs);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            skvi_pool_release(c, &c->pools[t][m]);
    if (c->k_append)
        clReleaseKernel(c->k_append);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        if (c->k_decode[t])
            clReleaseKernel(c->k_decode[t]);
        if (c->k_observe[t])
            clReleaseKernel(c->k_observe[t]);
        if (c->k_logits[t])
            clReleaseKernel(c->k_logits[t]);
        if (c->k_slot_copy[t])
            clReleaseKernel(c->k_slot_copy[t]);
    }
    if (c->k_merge)
        clReleaseKernel(c->k_merge);
    if (c->k_rdr_choose)
        clReleaseKernel(c->k_rdr_choose);
    for (int f = 0; f < SKV_TIER_COUNT; f++)
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            if (c->k_transcode[f][t])
                clReleaseKernel(c->k_transcode[f][t]);
    skvi_ada_release(c);
    skvi_score_release(c);
    skvi_free(c->ctx->alloc, c->query_mean);
    skvi_free(c->ctx->alloc, c->query_abs);
    if (c->transfer_pending)
        clReleaseEvent(c->transfer_pending);
    for (int i = 0; i < 2; i++)
        if (c->last_decode[i])
            clReleaseEvent(c->last_decode[i]);
    skvi_ws_release(c);
    cl_mem hb[] = {c->h_rows, c->h_sets, c->h_counts, c->h_weights};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++)
        if (hb[i])
            clReleaseMemObject(hb[i]);
    if (c->k_topk)
        clReleaseKernel(c->k_topk);
    if (c->k_topk_gather)
        clReleaseKernel(c->k_topk_gather);
    skvi_free(c->ctx->alloc, c);
}

skv_status skv_cache_page_bytes(const skv_cache *c, skv_tier tier, uint64_t *bytes)
{
    skvi_clear_error();
    if (!c || !bytes || (unsigned)tier >= SKV_TIER_COUNT)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG,
                         "skv_cache_page_bytes: cache or bytes is NULL, or tier %d is not a tier", (int)tier);
    *bytes = skvi_tier_page_bytes(tier, c->desc.head_dim, c->desc.page_tokens);
    return SKV_OK;
}

skv_status skvi_seq_get(const skv_cache *c, skv_seq_id id, const char *fn, skvi_seq **out)
{
    if (id >= c->seq_cap || !c->seqs[id].live)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u does not exist", fn, id);
    *out = &c->seqs[id];
    return SKV_OK;
}

skvi_page_list *skvi_seq_list(const skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, skv_tier tier)
{
    return &s->lists[((size_t)layer * c->desc.kv_heads + head) * SKV_TIER_COUNT + tier];
}

skv_status skvi_list_reserve(skv_cache *c, skvi_page_list *l, uint32_t extra)
{
    if (l->n + extra <= l->cap)
        return SKV_OK;
    uint32_t cap = l->cap ? l->cap : 4;
    while (cap < l->n + extra)
        cap *= 2;
    uint32_t *ids = skvi_calloc(c->ctx->alloc, cap, sizeof *ids);
    if (!ids)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "page list: out of memory");
    if (l->n)
        memcpy(ids, l->ids, l->n * sizeof *ids);
    skvi_free(c->ctx->alloc, l->ids);
    l->ids = ids;
    l->cap = cap;
    return SKV_OK;
}

/* A free slot in the sequence table with its arrays allocated (not yet live). */
static skv_status seq_new(skv_cache *c, const char *fn, skv_seq_id *id_out)
{
    uint32_t id = 0;
    while (id < c->seq_cap && c->seqs[id].live)
        id++;
    if (id == c->seq_cap) {
        uint32_t cap = c->seq_cap ? 2 * c->seq_cap : 16;
        skvi_seq *grown = skvi_calloc(c->ctx->alloc, cap, sizeof *grown);
        if (!grown)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        if (c->seq_cap)
            memcpy(grown, c->seqs, c->seq_cap * sizeof *grown);
        skvi_free(c->ctx->alloc, c->seqs);
        c->seqs = grown;
        c->seq_cap = cap;
    }
    skvi_seq *s = &c->seqs[id];
    s->len = skvi_calloc(c->ctx->alloc, c->desc.layers, sizeof *s->len);
    s->next_pos = skvi_calloc(c->ctx->alloc, c->desc.layers, sizeof *s->next_pos);
    s->rdr_mark = skvi_calloc(c->ctx->alloc, c->desc.layers, sizeof *s->rdr_mark);
    s->lists = skvi_calloc(c->ctx->alloc, skvi_list_count(c), sizeof *s->lists);
    if (!s->len || !s->next_pos || !s->rdr_mark || !s->lists || skvi_stats_alloc(c, s) != SKV_OK) {
        seq_release(c, s);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    *id_out = id;
    return SKV_OK;
}

skv_status skv_seq_create(skv_cache *c, skv_seq_id *out)
{
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_create: cache or out is NULL");
    skv_seq_id id;
    skv_status st = seq_new(c, "skv_seq_create", &id);
    if (st != SKV_OK)
        return st;
    c->seqs[id].live = 1;
    *out = id;
    return SKV_OK;
}

skv_status skv_seq_free(skv_cache *c, skv_seq_id seq)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_seq_free: cache is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_free", &s);
    if (st == SKV_OK)
        seq_release(c, s); /* pages still read by enqueued kernels are only reused by later,
                              in-order work on the same queues */
    return st;
}

skv_status skv_seq_fork(skv_cache *c, skv_seq_id parent, skv_seq_id *child)
{
    skvi_clear_error();
    if (!c || !child)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_fork: cache or child is NULL");
    skvi_seq *p = NULL;
    skv_status st = skvi_seq_get(c, parent, "skv_seq_fork", &p);
    if (st == SKV_OK && (p->hetero || p->calib))
        return skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED,
                         "skv_seq_fork: sequence %u runs HeteroCache or a calibration; fork it before skv_seq_hetero or "
                         "after skv_hetero_calibrate_end",
                         parent);
    skv_seq_id id;
    if (st == SKV_OK)
        st = seq_new(c, "skv_seq_fork", &id);
    if (st != SKV_OK)
        return st;
    p = &c->seqs[parent]; /* seq_new may have moved the table */
    skvi_seq *s = &c->seqs[id];
    size_t n_lists = skvi_list_count(c);
    if (skvi_stats_copy(c, s, p) != SKV_OK || skvi_snap_copy(c, s, p) != SKV_OK || skvi_obs_copy(c, s, p) != SKV_OK) {
        seq_release(c, s);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_fork: out of memory");
    }
    for (size_t i = 0; i < n_lists; i++) {
        if (skvi_list_reserve(c, &s->lists[i], p->lists[i].n) != SKV_OK) {
            seq_release(c, s); /* nothing referenced yet */
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_fork: out of memory");
        }
    }
    for (size_t i = 0; i < n_lists; i++) {
        const skvi_page_list *from = &p->lists[i];
        for (uint32_t j = 0; j < from->n; j++) {
            uint32_t e = from->ids[j];
            skvi_pool_ref(skvi_entry_pool(c, SKVI_LIST_TIER(i), e), e & ~SKVI_HOST_BIT);
            s->lists[i].ids[j] = e;
        }
        s->lists[i].n = from->n;
        s->lists[i].tokens = from->tokens;
    }
    memcpy(s->len, p->len, c->desc.layers * sizeof *s->len);
    memcpy(s->next_pos, p->next_pos, c->desc.layers * sizeof *s->next_pos);
    memcpy(s->rdr_mark, p->rdr_mark, c->desc.layers * sizeof *s->rdr_mark);
    if (p->moved) /* the shared pages may still be arriving */
        clRetainEvent(s->moved = p->moved);
    s->live = 1;
    *child = id;
    return SKV_OK;
}

skv_status skv_seq_length(const skv_cache *c, skv_seq_id seq, uint32_t layer, uint64_t *tokens)
{
    skvi_clear_error();
    if (!c || !tokens)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_length: cache or tokens is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_length", &s);
    if (st != SKV_OK)
        return st;
    if (layer >= c->desc.layers)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_length: layer %u of %u", layer, c->desc.layers);
    *tokens = s->len[layer];
    return SKV_OK;
}

skv_status skv_seq_positions(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, int32_t *out,
                             size_t capacity, size_t *count)
{
    skvi_clear_error();
    if (!c || !count || (capacity && !out))
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG,
                         "skv_seq_positions: cache or count is NULL, or out is NULL with capacity > 0");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_positions", &s);
    if (st != SKV_OK)
        return st;
    if (layer >= c->desc.layers || kv_head >= c->desc.kv_heads)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_positions: layer %u / kv_head %u out of range",
                         layer, kv_head);
    const uint32_t P = c->desc.page_tokens;
    size_t held = 0, written = 0;
    st = skvi_finish(c->ctx); /* appends and moves complete */
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) { /* cache order: tier by tier */
        const skvi_page_list *l = skvi_seq_list(c, s, layer, kv_head, (skv_tier)t);
        size_t pos_offset = (size_t)(skvi_tier_page_bytes((skv_tier)t, c->desc.head_dim, P) - 4ull * P);
        for (uint32_t t0 = 0; st == SKV_OK && t0 < l->tokens && written < capacity; t0 += P) {
            uint32_t e = l->ids[t0 / P];
            size_t off;
            cl_mem buf = skvi_pool_locate(skvi_entry_pool(c, (skv_tier)t, e), e & ~SKVI_HOST_BIT, &off);
            size_t n = l->tokens - t0 < P ? (size_t)(l->tokens - t0) : P;
            if (n > capacity - written)
                n = capacity - written;
            cl_int e2 = clEnqueueReadBuffer(c->ctx->queue, buf, CL_FALSE, off + pos_offset, n * 4, out + written, 0,
                                            NULL, NULL); /* one wait for all of them, below */
            if (e2 != CL_SUCCESS)
                st = skvi_cl_fail(c->ctx->error, e2, "skv_seq_positions: clEnqueueReadBuffer");
            written += n;
        }
        held += l->tokens;
    }
    if (written) { /* even after a failed enqueue: the earlier reads write into out */
        cl_int e3 = clFinish(c->ctx->queue);
        if (st == SKV_OK && e3 != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e3, "skv_seq_positions: clFinish");
    }
    *count = held;
    return st;
}

skv_status skv_cache_get_stats(const skv_cache *c, skv_cache_stats *out)
{
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_get_stats: cache or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_cache_get_stats: out->struct_size is %zu, expected %zu",
                         out->struct_size, sizeof *out);
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++) {
            const skvi_pool *p = &c->pools[t][m];
            skv_pool_stats *ps = &out->pools[t][m];
            ps->page_bytes = skvi_tier_page_bytes((skv_tier)t, c->desc.head_dim, c->desc.page_tokens);
            ps->pages_used = p->used;
            ps->bytes_used = p->used * ps->page_bytes;
            for (uint32_t i = 0; i < p->n_chunks; i++)
                ps->pages_allocated += p->chunk_pages[i];
            ps->bytes_allocated = ps->pages_allocated * ps->page_bytes;
        }
    out->decode_calls = c->ws.calls;
    out->decode_cl_objects = c->ws.objects;
    out->device_budget_bytes = c->budget[SKV_MEM_DEVICE];
    out->host_budget_bytes = c->budget[SKV_MEM_HOST];
    uint64_t used = 0, f16_pages = 0;
    for (uint32_t i = 0; i < c->seq_cap; i++) {
        if (!c->seqs[i].live)
            continue;
        out->sequences++;
        for (size_t k = 0; k < skvi_list_count(c); k++)
            out->tokens[SKVI_LIST_TIER(k)] += c->seqs[i].lists[k].tokens;
        for (uint32_t l = 0; l < c->desc.layers; l++) /* every token appended, at F16 */
            f16_pages += (c->seqs[i].len[l] + c->desc.page_tokens - 1) / c->desc.page_tokens * c->desc.kv_heads;
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            used += out->pools[t][m].bytes_used;
    uint64_t f16 = f16_pages * out->pools[SKV_TIER_F16][SKV_MEM_DEVICE].page_bytes;
    out->bytes_ratio = f16 ? (double)used / (double)f16 : 1.0;
    return SKV_OK;
}

/* Drops a move event once complete: nothing left to wait for. Returns it, or NULL. */
static cl_event pending(cl_event *ev)
{
    if (*ev) {
        cl_int status = CL_QUEUED;
        clGetEventInfo(*ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL);
        if (status == CL_COMPLETE) {
            clReleaseEvent(*ev);
            *ev = NULL;
        }
    }
    return *ev;
}

skv_status skvi_compute_waits(skv_cache *c, const skv_seq_id *seqs, uint32_t n_seqs, cl_uint n_user,
                              const cl_event *user, cl_uint *n_out, const cl_event **out, cl_event **owned)
{
    *owned = NULL;
    cl_uint n_moves = 0;
    if (pending(&c->transfer_pending)) /* else no move is pending anywhere */
        for (uint32_t b = 0; b < (seqs ? n_seqs : 1); b++)
            n_moves += seqs ? pending(&c->seqs[seqs[b]].moved) != NULL : 1;
    c->hstats.compute_waits += n_moves != 0;
    if (!n_moves) {
        *n_out = n_user;
        *out = n_user ? user : NULL;
        return SKV_OK;
    }
    cl_event *all = skvi_calloc(c->ctx->alloc, n_user + n_moves, sizeof *all);
    if (!all)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "wait list: out of memory");
    if (n_user)
        memcpy(all, user, n_user * sizeof *all);
    *n_out = n_user;
    for (uint32_t b = 0; b < (seqs ? n_seqs : 1); b++) {
        cl_event ev = seqs ? c->seqs[seqs[b]].moved : c->transfer_pending;
        if (ev)
            all[(*n_out)++] = ev; /* a batch may name a sequence twice: waiting twice is harmless */
    }
    *out = all;
    *owned = all;
    return SKV_OK;
}

skv_status skvi_wait_moves(skv_cache *c, skv_seq_id seq)
{
    cl_uint n = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    skv_status st = skvi_compute_waits(c, &seq, 1, 0, NULL, &n, &waits, &owned);
    cl_int e = st == SKV_OK && n ? clEnqueueBarrierWithWaitList(c->ctx->queue, n, waits, NULL) : CL_SUCCESS;
    skvi_free(c->ctx->alloc, owned);
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "clEnqueueBarrierWithWaitList");
    return st;
}

skv_status skvi_finish(skv_context *ctx)
{
    cl_int e = clFinish(ctx->transfer);
    if (e == CL_SUCCESS)
        e = clFinish(ctx->queue);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "clFinish");
}

skv_status skv_context_finish(skv_context *ctx)
{
    skvi_clear_error();
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_finish: ctx is NULL");
    return skvi_finish(ctx);
}
