/* Page moves between device and host memory on the transfer queue. A move copies each
 * page into a page of the other pool, then swaps the sequence's reference; the copies
 * wait for compute work already enqueued (a marker), and later compute work waits for
 * the last copy (transfer_pending; decode only for its own sequences' last copy,
 * skvi_seq.moved), so no kernel reads or reuses a page mid-move. */
#include <string.h>

#include "cache_internal.h"

skv_status skvi_move_entries(skv_cache *c, skvi_seq *s, const uint32_t *list, const uint32_t *entry, uint32_t n,
                             skv_memory to, int track, cl_event *last_out, const char *fn)
{
    const skv_memory from = to == SKV_MEM_HOST ? SKV_MEM_DEVICE : SKV_MEM_HOST;
    if (last_out)
        *last_out = NULL;
    if (n == 0)
        return SKV_OK;
    uint32_t n_tier[SKV_TIER_COUNT] = {0};
    for (uint32_t k = 0; k < n; k++)
        n_tier[SKVI_LIST_TIER(list[k])]++;
    uint32_t *dst_ids = skvi_calloc(c->ctx->alloc, n, sizeof *dst_ids);
    if (!dst_ids)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    skv_status st = SKV_OK;
    for (int t = 0; t < SKV_TIER_COUNT && st == SKV_OK; t++) /* every tier's room first */
        st = skvi_pool_reserve(c, &c->pools[t][to], n_tier[t]);
    if (st != SKV_OK) {
        skvi_free(c->ctx->alloc, dst_ids);
        return skvi_fail(c->ctx->error, st, "%s: moving %u pages: %s", fn, n, skv_context_last_error(c->ctx));
    }
    for (uint32_t k = 0; k < n; k++)
        dst_ids[k] = skvi_pool_take(&c->pools[SKVI_LIST_TIER(list[k])][to]);

    cl_event marker = NULL, last = NULL;
    cl_int e = clEnqueueMarkerWithWaitList(c->ctx->queue, 0, NULL, &marker);
    uint32_t k = 0;
    for (; e == CL_SUCCESS && k < n; k++) {
        skv_tier tier = SKVI_LIST_TIER(list[k]);
        skvi_pool *src_pool = &c->pools[tier][from], *dst_pool = &c->pools[tier][to];
        uint32_t src_id = s->lists[list[k]].ids[entry[k]] & ~SKVI_HOST_BIT;
        size_t so, dof;
        cl_mem src = skvi_pool_locate(src_pool, src_id, &so);
        cl_mem dst = skvi_pool_locate(dst_pool, dst_ids[k], &dof);
        cl_event ev;
        e = clEnqueueCopyBuffer(c->ctx->transfer, src, dst, so, dof, src_pool->page_bytes, k == 0 ? 1 : 0,
                                k == 0 ? &marker : NULL, &ev);
        if (e == CL_SUCCESS) {
            if (last)
                clReleaseEvent(last);
            last = ev;
            c->hstats.bytes_moved += src_pool->page_bytes;
        }
    }
    if (marker)
        clReleaseEvent(marker);
    if (last) { /* even after a failure: enqueued copies write pages that may be reused */
        if (c->transfer_pending)
            clReleaseEvent(c->transfer_pending);
        c->transfer_pending = last;
        clRetainEvent(last);
        if (track) {
            if (s->moved)
                clReleaseEvent(s->moved);
            clRetainEvent(s->moved = last); /* copies run in order: the last covers the earlier ones */
        }
        clFlush(c->ctx->transfer);
    }
    if (e != CL_SUCCESS) {
        for (uint32_t i = 0; i < n; i++)
            skvi_pool_unref(&c->pools[SKVI_LIST_TIER(list[i])][to], dst_ids[i]);
        if (last)
            clReleaseEvent(last);
        skvi_free(c->ctx->alloc, dst_ids);
        return skvi_cl_fail(c->ctx->error, e, "clEnqueueCopyBuffer(page move)");
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t *ent = &s->lists[list[i]].ids[entry[i]];
        skvi_pool_unref(&c->pools[SKVI_LIST_TIER(list[i])][from], *ent & ~SKVI_HOST_BIT);
        *ent = dst_ids[i] | (to == SKV_MEM_HOST ? SKVI_HOST_BIT : 0);
    }
    skvi_free(c->ctx->alloc, dst_ids);
    if (last_out)
        *last_out = last;
    else
        clReleaseEvent(last);
    return SKV_OK;
}

/* Moves the full pages of [begin, end) of (layer, head) (~0u: every one) still in the
 * other memory. */
static skv_status move_pages(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t head, uint64_t begin,
                             uint64_t end, skv_memory to, const char *fn)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st != SKV_OK)
        return st;
    if (begin > end)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: token_begin %llu > token_end %llu", fn,
                         (unsigned long long)begin, (unsigned long long)end);
    if (layer != ~0u && (layer >= c->desc.layers || head >= c->desc.kv_heads))
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: layer %u / kv_head %u out of range", fn, layer, head);
    if (s->hetero)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "%s: HeteroCache runs on sequence %u and places its pages itself", fn, seq);
    const uint32_t P = c->desc.page_tokens;
    const skv_memory from = to == SKV_MEM_HOST ? SKV_MEM_DEVICE : SKV_MEM_HOST;
    if (to == SKV_MEM_HOST) { /* pending statistics read device pages: before they move */
        st = skvi_stats_flush(c, s, layer);
        if (st != SKV_OK)
            return st;
    }

    /* Which entries move: full pages inside [begin, end) of each list, still in `from`. */
    uint64_t first_page = (begin + P - 1) / P;
    size_t n_lists = skvi_list_count(c);
    uint32_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t *lists = NULL, *entries = NULL;
        if (pass == 1) {
            if (n == 0)
                return SKV_OK;
            lists = skvi_calloc(c->ctx->alloc, n, sizeof *lists);
            entries = skvi_calloc(c->ctx->alloc, n, sizeof *entries);
            if (!lists || !entries) {
                skvi_free(c->ctx->alloc, lists);
                skvi_free(c->ctx->alloc, entries);
                return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
            }
            n = 0;
        }
        for (size_t i = 0; i < n_lists; i++) {
            const uint32_t li = (uint32_t)(i / SKV_TIER_COUNT);
            if (layer != ~0u && li != layer * c->desc.kv_heads + head)
                continue;
            uint64_t len = s->lists[i].tokens;
            uint64_t last = (end < len ? end : len) / P; /* pages [first_page, last) are full and inside */
            for (uint64_t j = first_page; j < last; j++)
                if (((s->lists[i].ids[j] & SKVI_HOST_BIT) != 0) == (from == SKV_MEM_HOST)) {
                    if (pass == 1)
                        lists[n] = (uint32_t)i, entries[n] = (uint32_t)j;
                    n++;
                }
        }
        if (pass == 1) {
            st = skvi_move_entries(c, s, lists, entries, n, to, 1, NULL, fn);
            skvi_free(c->ctx->alloc, lists);
            skvi_free(c->ctx->alloc, entries);
        }
    }
    return st;
}

skv_status skv_seq_offload(skv_cache *c, skv_seq_id seq, uint64_t token_begin, uint64_t token_end)
{
    return move_pages(c, seq, ~0u, 0, token_begin, token_end, SKV_MEM_HOST, "skv_seq_offload");
}

skv_status skv_seq_fetch(skv_cache *c, skv_seq_id seq, uint64_t token_begin, uint64_t token_end)
{
    return move_pages(c, seq, ~0u, 0, token_begin, token_end, SKV_MEM_DEVICE, "skv_seq_fetch");
}

skv_status skv_seq_offload_head(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, uint64_t token_begin,
                                uint64_t token_end)
{
    return move_pages(c, seq, layer, kv_head, token_begin, token_end, SKV_MEM_HOST, "skv_seq_offload_head");
}

skv_status skv_seq_fetch_head(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, uint64_t token_begin,
                              uint64_t token_end)
{
    return move_pages(c, seq, layer, kv_head, token_begin, token_end, SKV_MEM_DEVICE, "skv_seq_fetch_head");
}

skv_status skv_seq_host_pages(const skv_cache *c, skv_seq_id seq, uint64_t *pages)
{
    skvi_clear_error();
    if (!c || !pages)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_host_pages: cache or pages is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_host_pages", &s);
    if (st != SKV_OK)
        return st;
    uint64_t n = 0;
    for (size_t i = 0; i < skvi_list_count(c); i++)
        for (uint32_t j = 0; j < s->lists[i].n; j++)
            n += (s->lists[i].ids[j] & SKVI_HOST_BIT) != 0;
    *pages = n;
    return SKV_OK;
}

skv_status skv_cache_transfer_event(skv_cache *c, cl_event *event)
{
    skvi_clear_error();
    if (!c || !event)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_transfer_event: cache or event is NULL");
    *event = c->transfer_pending;
    if (*event)
        clRetainEvent(*event);
    return SKV_OK;
}
