/* A cache's decode kernels: parameters fitted to the device, one program per tier
 * (tier access + schedule, cl/decode.h), the variant chosen from the tuning database,
 * rebuilt by skv_cache_set_decode_params; the kernels that keep logits and the observe
 * kernels, built on first use. */
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

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

skv_status skvi_cache_build_kernels(skv_cache *c)
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

void skvi_cache_release_kernels(skv_cache *c)
{
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
}
