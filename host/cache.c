/* skv_cache: geometry checks, budgets, pools, creation and destruction, statistics.
 * Sequences are in seq.c, the decode kernels in decode_kernels.c, appends, page moves
 * and attention in append.c, transfer.c and attention.c, waits in waits.c. */
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
    desc->slack = 64;
    desc->score_refresh = 8;
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
        if (d->score_refresh == 0)
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: score_refresh is 0 (1 scores every token each time)", fn);
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
    c->rq = ctx->queue;
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
    for (size_t i = 0; st == SKV_OK && i < skvi_part_count; i++) /* in order (parts.c) */
        if (skvi_parts[i].cache_init)
            st = skvi_parts[i].cache_init(c);
    if (st != SKV_OK) {
        skv_cache_destroy(c);
        return st;
    }
    *out = c;
    return SKV_OK;
}

void skv_cache_destroy(skv_cache *c)
{
    if (!c)
        return;
    skvi_finish(c->ctx); /* not the public call: it would clear the caller's last error */
    for (uint32_t i = 0; i < c->seq_cap; i++)
        if (c->seqs[i].live)
            skvi_seq_release(c, &c->seqs[i]);
    skvi_free(c->ctx->alloc, c->seqs);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            skvi_pool_release(c, &c->pools[t][m]);
    for (size_t i = skvi_part_count; i-- > 0;)
        if (skvi_parts[i].cache_release)
            skvi_parts[i].cache_release(c);
    skvi_free(c->ctx->alloc, c->query_mean);
    skvi_free(c->ctx->alloc, c->query_abs);
    if (c->transfer_pending)
        clReleaseEvent(c->transfer_pending);
    if (c->caller_hold)
        clReleaseEvent(c->caller_hold);
    for (int i = 0; i < 2; i++)
        if (c->last_decode[i])
            clReleaseEvent(c->last_decode[i]);
    skvi_ws_release(c);
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
    out->compressions = c->compressions;
    out->compress_host_waits = c->compress_waits;
    out->deferred_compressions = c->deferred_runs;
    out->deferred_pending = c->deferred;
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
