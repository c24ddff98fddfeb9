/* Sequences and their page lists: create, free, fork with copy-on-write page sharing,
 * lengths and positions. */
#include <string.h>

#include "cache_internal.h"

size_t skvi_list_count(const skv_cache *c) { return (size_t)c->desc.layers * c->desc.kv_heads * SKV_TIER_COUNT; }

skvi_pool *skvi_entry_pool(skv_cache *c, skv_tier tier, uint32_t entry)
{
    return &c->pools[tier][entry & SKVI_HOST_BIT ? SKV_MEM_HOST : SKV_MEM_DEVICE];
}

void skvi_seq_release(skv_cache *c, skvi_seq *s)
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
    if (s->rdr_gate)
        skvi_rdr_ungate(c, s, ~0u);
    skvi_free(c->ctx->alloc, s->rdr_gate);
    for (size_t i = skvi_part_count; i-- > 0;)
        if (skvi_parts[i].seq_release)
            skvi_parts[i].seq_release(c, s);
    if (s->moved)
        clReleaseEvent(s->moved);
    memset(s, 0, sizeof *s);
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

skv_status skvi_seq_new(skv_cache *c, const char *fn, skv_seq_id *id_out)
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
    s->rdr_gate = skvi_calloc(c->ctx->alloc, c->desc.layers, sizeof *s->rdr_gate);
    s->lists = skvi_calloc(c->ctx->alloc, skvi_list_count(c), sizeof *s->lists);
    int ok = s->len && s->next_pos && s->rdr_mark && s->rdr_gate && s->lists;
    for (size_t i = 0; ok && i < skvi_part_count; i++)
        ok = !skvi_parts[i].seq_init || skvi_parts[i].seq_init(c, s) == SKV_OK;
    if (!ok) {
        skvi_seq_release(c, s);
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
    skv_status st = skvi_seq_new(c, "skv_seq_create", &id);
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
        skvi_seq_release(c, s); /* pages still read by enqueued kernels are only reused by later,
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
        st = skvi_seq_new(c, "skv_seq_fork", &id);
    if (st != SKV_OK)
        return st;
    p = &c->seqs[parent]; /* seq_new may have moved the table */
    skvi_seq *s = &c->seqs[id];
    size_t n_lists = skvi_list_count(c);
    for (size_t i = 0; i < skvi_part_count; i++)
        if (skvi_parts[i].seq_fork && skvi_parts[i].seq_fork(c, s, p) != SKV_OK) {
            skvi_seq_release(c, s);
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_fork: out of memory");
        }
    for (size_t i = 0; i < n_lists; i++) {
        if (skvi_list_reserve(c, &s->lists[i], p->lists[i].n) != SKV_OK) {
            skvi_seq_release(c, s); /* nothing referenced yet */
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
    for (uint32_t l = 0; l < c->desc.layers; l++) /* the parent's deferred compressions are the child's too */
        if (p->rdr_gate[l])
            skvi_rdr_gate(c, s, l, p->rdr_gate[l]);
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

skv_status skvi_positions_enqueue(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t kv_head, int32_t *out,
                                  size_t capacity, const uint32_t *from)
{
    const uint32_t P = c->desc.page_tokens;
    size_t done = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) { /* cache order: tier by tier */
        const skvi_page_list *l = skvi_seq_list(c, s, layer, kv_head, (skv_tier)t);
        size_t pos_offset = (size_t)(skvi_tier_page_bytes((skv_tier)t, c->desc.head_dim, P) - 4ull * P);
        for (uint32_t t0 = from ? from[t] : 0; t0 < l->tokens && done + t0 < capacity;) {
            uint32_t e = l->ids[t0 / P], slot = t0 % P;
            size_t off;
            cl_mem buf = skvi_pool_locate(skvi_entry_pool(c, (skv_tier)t, e), e & ~SKVI_HOST_BIT, &off);
            uint32_t n = l->tokens - t0 < P - slot ? l->tokens - t0 : P - slot;
            if (n > capacity - done - t0)
                n = (uint32_t)(capacity - done - t0);
            cl_int e2 = clEnqueueReadBuffer(c->rq, buf, CL_FALSE, off + pos_offset + 4ull * slot, n * 4ull,
                                            out + done + t0, 0, NULL, NULL);
            if (e2 != CL_SUCCESS) {
                skvi_drain(c->rq); /* the earlier reads write into out */
                return skvi_cl_fail(c->ctx->error, e2, "reading positions: clEnqueueReadBuffer");
            }
            t0 += n;
        }
        done += l->tokens;
    }
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
    size_t held = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        held += skvi_seq_list(c, s, layer, kv_head, (skv_tier)t)->tokens;
    *count = held;
    if (held == 0 || capacity == 0)
        return SKV_OK;
    st = skvi_finish(c->ctx); /* appends and moves complete */
    if (st == SKV_OK)
        st = skvi_positions_enqueue(c, s, layer, kv_head, out, capacity, NULL);
    if (st == SKV_OK) {
        cl_int e = clFinish(c->ctx->queue);
        if (e != CL_SUCCESS) {
            skvi_drain(c->ctx->queue); /* no read is left writing into the caller's out */
            st = skvi_cl_fail(c->ctx->error, e, "skv_seq_positions: clFinish");
        }
    }
    return st;
}
