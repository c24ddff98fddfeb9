/* Appending tokens of one layer to a sequence: all or nothing. Every page, buffer and
 * list slot the append needs is obtained first; only then is the sequence changed, and
 * an enqueue failure after that point rolls the change back. */
#include <string.h>

#include "cache_internal.h"

static size_t dtype_size(skv_dtype t) { return t == SKV_F32 ? 4 : 2; }

typedef struct append_plan {
    uint32_t pages_per_head; /* dest table row length: the most pages any head writes */
    uint32_t *first_slot;    /* per head: slot of the first new token in its tail page */
    uint32_t *fresh;         /* per head: pages taken for it, COW copies not counted */
    uint32_t *dest;          /* [kv_heads][pages_per_head] */
    uint32_t *taken;         /* pages taken from the pool, in order */
    uint32_t n_taken;
    uint32_t *cow_old;       /* per head: the shared tail page replaced by a copy, or ~0 */
} append_plan;

static void plan_free(skv_cache *c, append_plan *p)
{
    skvi_free(c->ctx->alloc, p->first_slot);
    skvi_free(c->ctx->alloc, p->fresh);
    skvi_free(c->ctx->alloc, p->dest);
    skvi_free(c->ctx->alloc, p->taken);
    skvi_free(c->ctx->alloc, p->cow_old);
}

static skv_status buffer_from_host(skv_cache *c, const void *src, size_t bytes, cl_mem *out)
{
    cl_int e;
    *out = clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)src, &e);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(c->ctx->error, e, "skv_append: clCreateBuffer");
}

/* Takes every page the append needs and fills the destination table; on failure the
 * pool is exactly as before. Heads may hold different numbers of F16 tokens (retention
 * drops per head), so each has its own first slot. */
static skv_status plan(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n, append_plan *p)
{
    const uint32_t P = c->desc.page_tokens, H = c->desc.kv_heads;
    skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
    const skv_allocator *a = c->ctx->alloc;
    memset(p, 0, sizeof *p);
    p->first_slot = skvi_calloc(a, H, sizeof *p->first_slot);
    p->fresh = skvi_calloc(a, H, sizeof *p->fresh);
    p->cow_old = skvi_calloc(a, H, sizeof *p->cow_old);
    if (!p->first_slot || !p->fresh || !p->cow_old) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_append: out of memory");
    }
    uint64_t need = 0; /* up to kv_heads x 2^31 / page_tokens: wider than a page id */
    for (uint32_t h = 0; h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
        uint32_t fs = l->tokens % P, pages = (uint32_t)(((uint64_t)fs + n + P - 1) / P);
        p->first_slot[h] = fs;
        p->fresh[h] = pages - (fs ? 1 : 0);
        p->cow_old[h] = ~0u;
        if (fs) {
            uint32_t e = l->ids[l->n - 1];
            if (e & SKVI_HOST_BIT) {
                plan_free(c, p);
                return skvi_fail(c->ctx->error, SKV_ERR_INTERNAL, "skv_append: the tail page is in host memory");
            }
            if (pool->refs[e] > 1)
                p->cow_old[h] = e, need++;
        }
        need += p->fresh[h];
        if (pages > p->pages_per_head)
            p->pages_per_head = pages;
    }
    if (need > 0x7FFFFFFFull || need > c->budget[SKV_MEM_DEVICE] / pool->page_bytes) { /* before any allocation */
        plan_free(c, p);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY,
                         "skv_append: %u tokens need %llu new pages, more than the device budget holds", n,
                         (unsigned long long)need);
    }
    p->dest = skvi_calloc(a, (size_t)H * p->pages_per_head, sizeof *p->dest);
    p->taken = skvi_calloc(a, need ? (size_t)need : 1, sizeof *p->taken);
    if (!p->dest || !p->taken) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_append: out of memory");
    }
    for (uint32_t h = 0; h < H; h++) { /* list capacity first: it changes no content */
        skv_status st = skvi_list_reserve(c, skvi_seq_list(c, s, layer, h, SKV_TIER_F16), p->fresh[h]);
        if (st != SKV_OK) {
            plan_free(c, p);
            return st;
        }
    }
    skv_status st = skvi_pool_reserve(c, pool, (uint32_t)need);
    if (st != SKV_OK) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, st, "skv_append: %u tokens need %llu new pages: %s", n,
                         (unsigned long long)need, skv_context_last_error(c->ctx));
    }
    for (uint32_t h = 0; h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
        uint32_t *d = p->dest + (size_t)h * p->pages_per_head;
        uint32_t j = 0;
        if (p->first_slot[h]) {
            uint32_t e = l->ids[l->n - 1];
            if (p->cow_old[h] != ~0u)
                e = p->taken[p->n_taken++] = skvi_pool_take(pool);
            d[j++] = e;
        }
        for (uint32_t k = 0; k < p->fresh[h]; k++)
            d[j++] = p->taken[p->n_taken++] = skvi_pool_take(pool);
    }
    return SKV_OK;
}

static void plan_return_pages(skv_cache *c, append_plan *p)
{
    for (uint32_t i = 0; i < p->n_taken; i++)
        skvi_pool_unref(&c->pools[SKV_TIER_F16][SKV_MEM_DEVICE], p->taken[i]);
    p->n_taken = 0;
}

static skv_status append_impl(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t n, skv_dtype dtype,
                              const void *k_host, const void *v_host, cl_mem k_mem, size_t k_off, cl_mem v_mem,
                              size_t v_off, const int32_t *positions, cl_uint num_wait, const cl_event *wait_list,
                              cl_event *event, const char *fn)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    skvi_rdr_run_deferred(c);
    char *err = c->ctx->error;
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st != SKV_OK)
        return st;
    if (layer >= c->desc.layers)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u of %u", fn, layer, c->desc.layers);
    if (n == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: n_tokens is 0", fn);
    if ((unsigned)dtype > SKV_BF16)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: dtype %d is not an skv_dtype", fn, (int)dtype);
    if (!positions || (!k_mem && (!k_host || !v_host)) || (k_mem && !v_mem))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: k, v or positions is NULL", fn);
    if ((num_wait == 0) != (wait_list == NULL))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: num_wait and wait_list disagree", fn);
    if (s->len[layer] + n > 0x7FFFFFFFull)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: a sequence holds at most 2^31 - 1 tokens per layer", fn);
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim;
    size_t bytes = (size_t)n * H * D * dtype_size(dtype);

    if (k_mem) {
        st = skvi_check_mem(c->ctx, k_mem, k_off, bytes, fn, "k");
        if (st == SKV_OK)
            st = skvi_check_mem(c->ctx, v_mem, v_off, bytes, fn, "v");
        if (st != SKV_OK)
            return st;
    }

    int64_t top = 0;
    for (uint32_t t = 0; t < n; t++)
        top = (int64_t)positions[t] + 1 > top ? (int64_t)positions[t] + 1 : top; /* INT32_MAX + 1 fits */
    if ((c->desc.scorer == SKV_SCORER_OBSERVED || s->hetero) && top > skvi_position_span(s->len[layer] + n))
        return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                         "%s: position %lld after %llu tokens: the %s keeps per-position state, so positions may run "
                         "at most %dx ahead of the tokens appended (or up to %d)",
                         fn, (long long)top - 1, (unsigned long long)(s->len[layer] + n),
                         s->hetero ? "HeteroCache" : "observed scorer", SKVI_POSITION_SPAN_RATIO,
                         SKVI_POSITION_SPAN_MIN);
    st = skvi_stats_reserve(c, s, layer, n); /* room for the positions the statistics will need */
    if (st == SKV_OK)
        st = skvi_obs_reserve(c, s, layer, top);
    if (st == SKV_OK)
        st = skvi_hetero_reserve(c, s, layer, n);
    if (st != SKV_OK)
        return st;
    append_plan p;
    st = plan(c, s, layer, n, &p);
    if (st != SKV_OK)
        return st;
    /* a NaN key or value would poison its head's every decode; checked once the budget
     * has room, so a refused append reads nothing */
    for (int i = 0; !k_mem && st == SKV_OK && i < 2; i++) {
        const size_t count = (size_t)n * H * D, bad = skvi_first_nonfinite(dtype, i ? v_host : k_host, count);
        if (bad < count)
            st = skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: %s of token %zu, kv-head %zu holds NaN or Inf (element %zu)", fn,
                           i ? "v" : "k", bad / ((size_t)H * D), bad / D % H, bad % D);
    }
    cl_mem kbuf = k_mem, vbuf = v_mem, dest = NULL, pos = NULL;
    if (!k_mem && st == SKV_OK) {
        k_off = v_off = 0;
        st = buffer_from_host(c, k_host, bytes, &kbuf);
        if (st == SKV_OK)
            st = buffer_from_host(c, v_host, bytes, &vbuf);
    }
    cl_mem first = NULL;
    if (st == SKV_OK)
        st = buffer_from_host(c, p.dest, (size_t)H * p.pages_per_head * sizeof *p.dest, &dest);
    if (st == SKV_OK)
        st = buffer_from_host(c, p.first_slot, (size_t)H * sizeof *p.first_slot, &first);
    if (st == SKV_OK)
        st = buffer_from_host(c, positions, (size_t)n * sizeof *positions, &pos);
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    if (st == SKV_OK)
        st = skvi_compute_waits(c, NULL, 0, num_wait, wait_list, &n_waits, &waits, &owned);
    /* an interop append defers the compression it makes due (rdr_defer.c), and an append
     * to a layer with one deferred moves its gate on: both need the append's event */
    const int gated = c->desc.retention == SKV_RETENTION_RDR && (k_mem || s->rdr_gate[layer]);
    cl_event mine = NULL, *done = event ? event : gated ? &mine : NULL;

    /* Commit: the sequence changes from here; enqueue errors roll it back. */
    skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
    cl_int e = CL_SUCCESS;
    uint32_t committed = 0;
    for (uint32_t h = 0; st == SKV_OK && h < H; h++, committed++) {
        skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
        const uint32_t *d = p.dest + (size_t)h * p.pages_per_head;
        if (p.cow_old[h] != ~0u) { /* copy the shared tail page before writing into it */
            size_t so, dof;
            cl_mem src = skvi_pool_locate(pool, p.cow_old[h], &so);
            cl_mem dst = skvi_pool_locate(pool, d[0], &dof);
            e = clEnqueueCopyBuffer(c->ctx->queue, src, dst, so, dof, pool->page_bytes, n_waits, waits, NULL);
            n_waits = 0; /* later commands follow in queue order */
            waits = NULL;
            if (e != CL_SUCCESS)
                break;
            l->ids[l->n - 1] = d[0];
        }
        uint32_t j0 = p.first_slot[h] ? 1 : 0; /* d[0] is the tail page when there is one */
        for (uint32_t j = j0; j < j0 + p.fresh[h]; j++)
            l->ids[l->n++] = d[j];
        l->tokens += n;
    }
    skvi_args a = skvi_args_begin(c->k_append, 0);
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel k = c->k_append;
        skvi_pool_bind(&a, pool);
        skvi_arg_mem(&a, dest);
        skvi_arg_u32(&a, p.pages_per_head);
        skvi_arg_mem(&a, first);
        skvi_arg_mem(&a, kbuf);
        skvi_arg_u64(&a, k_off);
        skvi_arg_mem(&a, vbuf);
        skvi_arg_u64(&a, v_off);
        skvi_arg_u32(&a, (cl_uint)dtype);
        skvi_arg_mem(&a, pos);
        size_t global[3] = {D, n, H};
        e = skvi_args_end(&a);
        if (e == CL_SUCCESS)
            e = skvi_enqueue_items(c->ctx->device, c->ctx->queue, k, 3, global, n_waits, waits, done);
    }
    if (st == SKV_OK && e != CL_SUCCESS) { /* roll back what was committed */
        for (uint32_t h = 0; h < committed; h++) {
            skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
            l->n -= p.fresh[h];
            l->tokens -= n;
            if (p.cow_old[h] != ~0u)
                l->ids[l->n - 1] = p.cow_old[h];
        }
        st = a.err != CL_SUCCESS ? skvi_args_fail(err, &a, "skv_append: enqueue")
                                 : skvi_cl_fail(err, e, "skv_append: enqueue");
    }
    if (st == SKV_OK) {
        for (uint32_t h = 0; h < H; h++)
            if (p.cow_old[h] != ~0u)
                skvi_pool_unref(pool, p.cow_old[h]); /* the sequence's reference moved to the copy */
        s->len[layer] += n;
        skvi_stats_note(c, s, layer, positions, n);
        skvi_obs_note(c, s, layer, positions, n);
        skvi_hetero_note(c, s, layer, positions, n);
        for (uint32_t t = 0; t < n; t++)
            if ((int64_t)positions[t] + 1 > s->next_pos[layer])
                s->next_pos[layer] = (int64_t)positions[t] + 1;
    } else {
        plan_return_pages(c, &p);
    }
    skvi_free(c->ctx->alloc, owned);
    if (kbuf && kbuf != k_mem)
        clReleaseMemObject(kbuf);
    if (vbuf && vbuf != v_mem)
        clReleaseMemObject(vbuf);
    if (dest)
        clReleaseMemObject(dest);
    if (first)
        clReleaseMemObject(first);
    if (pos)
        clReleaseMemObject(pos);
    plan_free(c, &p);
    /* RDR runs once slack tokens have come since it last ran (rdr_defer.c): here, when
     * the next F16 token could take the layer past its budget; an interop append starts
     * it after half of them, deferred until this append completes. A failure leaves the
     * sequence as this append made it (compression is all or nothing) and is retried on
     * the next append; skv_compress reports it. */
    const int rdr = st == SKV_OK && c->desc.retention == SKV_RETENTION_RDR;
    if (rdr && done)
        skvi_rdr_note_caller_waits(c, num_wait, *done);
    if (rdr && skvi_rdr_due(c, s, layer) && (!gated || skvi_rdr_may_wait(c))) {
        char saved[SKVI_ERROR_MAX];
        memcpy(saved, c->ctx->error, sizeof saved);
        if (skvi_compress(c, seq, s, layer) == SKV_OK) /* on the compute queue, after this append */
            skvi_rdr_ungate(c, s, layer);
        else if (gated) /* retried once this append completed */
            skvi_rdr_gate(c, s, layer, *done);
        memcpy(c->ctx->error, saved, sizeof saved);
        skvi_clear_error();
    } else if (rdr && gated && (skvi_rdr_soon(c, s, layer) || s->rdr_gate[layer])) {
        skvi_rdr_gate(c, s, layer, *done);
    }
    if (mine)
        clReleaseEvent(mine);
    return st;
}

skv_status skv_append(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t n_tokens, skv_dtype dtype,
                      const void *k, const void *v, const int32_t *positions)
{
    return append_impl(c, seq, layer, n_tokens, dtype, k, v, NULL, 0, NULL, 0, positions, 0, NULL, NULL,
                       "skv_append");
}

skv_status skv_append_cl(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t n_tokens, skv_dtype dtype,
                         cl_mem k, size_t k_offset, cl_mem v, size_t v_offset, const int32_t *positions,
                         cl_uint num_wait, const cl_event *wait_list, cl_event *event)
{
    if (!k || !v)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_append_cl: k or v is NULL");
    return append_impl(c, seq, layer, n_tokens, dtype, NULL, NULL, k, k_offset, v, v_offset, positions, num_wait,
                       wait_list, event, "skv_append_cl");
}
