/* Page moves between device and host memory on the transfer queue. A move copies each
 * page into a page of the other pool, then swaps the sequence's reference; the copies
 * wait for compute work already enqueued (a marker), and later compute work waits for
 * the last copy (transfer_pending; decode only for its own sequences' last copy,
 * skvi_seq.moved), so no kernel reads or reuses a page mid-move. */
#include <string.h>

#include "cache_internal.h"

typedef struct move {
    uint32_t *list_index; /* (list, entry) pairs to move */
    uint32_t *entry;
    uint32_t n;
} move;

static skv_status move_pages(skv_cache *c, skv_seq_id seq, uint64_t begin, uint64_t end, skv_memory to,
                             const char *fn)
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
    const uint32_t P = c->desc.page_tokens;
    const skv_memory from = to == SKV_MEM_HOST ? SKV_MEM_DEVICE : SKV_MEM_HOST;
    if (to == SKV_MEM_HOST) { /* pending statistics read device pages: before they move */
        st = skvi_stats_flush(c, s);
        if (st != SKV_OK)
            return st;
    }

    /* Which entries move: full pages inside [begin, end) of each list, still in `from`. */
    uint64_t first_page = (begin + P - 1) / P;
    size_t n_lists = skvi_list_count(c);
    uint32_t n_tier[SKV_TIER_COUNT] = {0}, n = 0;
    for (size_t i = 0; i < n_lists; i++) {
        uint64_t len = s->lists[i].tokens;
        uint64_t last = (end < len ? end : len) / P; /* pages [first_page, last) are full and inside */
        for (uint64_t j = first_page; j < last; j++)
            n_tier[SKVI_LIST_TIER(i)] += ((s->lists[i].ids[j] & SKVI_HOST_BIT) != 0) == (from == SKV_MEM_HOST);
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        n += n_tier[t];
    if (n == 0)
        return SKV_OK;
    move m = {skvi_calloc(c->ctx->alloc, n, sizeof(uint32_t)), skvi_calloc(c->ctx->alloc, n, sizeof(uint32_t)), 0};
    uint32_t *dst_ids = skvi_calloc(c->ctx->alloc, n, sizeof *dst_ids);
    if (!m.list_index || !m.entry || !dst_ids) {
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        goto done;
    }
    for (size_t i = 0; i < n_lists; i++) {
        uint64_t len = s->lists[i].tokens;
        uint64_t last = (end < len ? end : len) / P;
        for (uint64_t j = first_page; j < last; j++)
            if (((s->lists[i].ids[j] & SKVI_HOST_BIT) != 0) == (from == SKV_MEM_HOST)) {
                m.list_index[m.n] = (uint32_t)i;
                m.entry[m.n++] = (uint32_t)j;
            }
    }
    for (int t = 0; t < SKV_TIER_COUNT && st == SKV_OK; t++) /* every tier's room first */
        st = skvi_pool_reserve(c, &c->pools[t][to], n_tier[t]);
    if (st != SKV_OK) {
        st = skvi_fail(c->ctx->error, st, "%s: moving %u pages: %s", fn, n, skv_context_last_error(c->ctx));
        goto done;
    }
    for (uint32_t k = 0; k < n; k++)
        dst_ids[k] = skvi_pool_take(&c->pools[SKVI_LIST_TIER(m.list_index[k])][to]);

    cl_event marker = NULL, last = NULL;
    cl_int e = clEnqueueMarkerWithWaitList(c->ctx->queue, 0, NULL, &marker);
    uint32_t k = 0;
    for (; e == CL_SUCCESS && k < n; k++) {
        skv_tier tier = SKVI_LIST_TIER(m.list_index[k]);
        skvi_pool *src_pool = &c->pools[tier][from], *dst_pool = &c->pools[tier][to];
        uint32_t src_id = s->lists[m.list_index[k]].ids[m.entry[k]] & ~SKVI_HOST_BIT;
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
        }
    }
    if (marker)
        clReleaseEvent(marker);
    if (last) { /* even after a failure: enqueued copies write pages that may be reused */
        if (c->transfer_pending)
            clReleaseEvent(c->transfer_pending);
        c->transfer_pending = last;
        if (s->moved)
            clReleaseEvent(s->moved);
        clRetainEvent(s->moved = last); /* copies run in order: the last covers the earlier ones */
        clFlush(c->ctx->transfer);
    }
    if (e != CL_SUCCESS) {
        for (uint32_t i = 0; i < n; i++)
            skvi_pool_unref(&c->pools[SKVI_LIST_TIER(m.list_index[i])][to], dst_ids[i]);
        st = skvi_cl_fail(c->ctx->error, e, "clEnqueueCopyBuffer(page move)");
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t *entry = &s->lists[m.list_index[i]].ids[m.entry[i]];
        skvi_pool_unref(&c->pools[SKVI_LIST_TIER(m.list_index[i])][from], *entry & ~SKVI_HOST_BIT);
        *entry = dst_ids[i] | (to == SKV_MEM_HOST ? SKVI_HOST_BIT : 0);
    }
done:
    skvi_free(c->ctx->alloc, m.list_index);
    skvi_free(c->ctx->alloc, m.entry);
    skvi_free(c->ctx->alloc, dst_ids);
    return st;
}

skv_status skv_seq_offload(skv_cache *c, skv_seq_id seq, uint64_t token_begin, uint64_t token_end)
{
    return move_pages(c, seq, token_begin, token_end, SKV_MEM_HOST, "skv_seq_offload");
}

skv_status skv_seq_fetch(skv_cache *c, skv_seq_id seq, uint64_t token_begin, uint64_t token_end)
{
    return move_pages(c, seq, token_begin, token_end, SKV_MEM_DEVICE, "skv_seq_fetch");
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
