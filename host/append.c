/* Appending tokens of one layer to a sequence: all or nothing. Every page, buffer and
 * list slot the append needs is obtained first; only then is the sequence changed, and
 * an enqueue failure after that point rolls the change back. */
#include <string.h>

#include "cache_internal.h"

static size_t dtype_size(skv_dtype t) { return t == SKV_F32 ? 4 : 2; }

typedef struct append_plan {
    uint32_t first_slot;     /* slot of the first new token in its page */
    uint32_t pages_per_head; /* dest pages per head, the partly filled tail included */
    uint32_t fresh_per_head; /* pages to take per head, COW copies not counted */
    int tail;                /* the last page is partly filled and receives tokens */
    uint32_t *dest;          /* [kv_heads][pages_per_head] */
    uint32_t *taken;         /* pages taken from the pool, in order */
    uint32_t n_taken;
    uint32_t *cow_old;       /* per head: the shared tail page replaced by a copy, or ~0 */
} append_plan;

static void plan_free(skv_cache *c, append_plan *p)
{
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

static skv_status check_buffer(skv_cache *c, cl_mem m, size_t offset, size_t bytes, const char *name)
{
    size_t size = 0;
    cl_int e = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (e != CL_SUCCESS)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_append_cl: %s is not a valid cl_mem (%s)", name,
                         skvi_cl_error_name(e));
    if (offset > size || size - offset < bytes)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_append_cl: %s holds %zu bytes, the append reads %zu from offset %zu", name, size, bytes,
                         offset);
    return SKV_OK;
}

/* Takes every page the append needs and fills the destination table; on failure the
 * pool is exactly as before. */
static skv_status plan(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n, append_plan *p)
{
    const uint32_t P = c->desc.page_tokens, H = c->desc.kv_heads;
    skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
    memset(p, 0, sizeof *p);
    uint64_t len = s->len[layer];
    p->first_slot = (uint32_t)(len % P);
    p->tail = p->first_slot != 0;
    p->pages_per_head = (p->first_slot + n + P - 1) / P;
    p->fresh_per_head = p->pages_per_head - (p->tail ? 1 : 0);
    uint32_t cows = 0;
    for (uint32_t h = 0; p->tail && h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h);
        uint32_t e = l->ids[l->n - 1];
        if (e & SKVI_HOST_BIT)
            return skvi_fail(c->ctx->error, SKV_ERR_INTERNAL, "skv_append: the tail page is in host memory");
        cows += pool->refs[e] > 1;
    }
    uint32_t need = H * p->fresh_per_head + cows;
    p->dest = skvi_calloc(c->ctx->alloc, (size_t)H * p->pages_per_head, sizeof *p->dest);
    p->taken = skvi_calloc(c->ctx->alloc, need ? need : 1, sizeof *p->taken);
    p->cow_old = skvi_calloc(c->ctx->alloc, H, sizeof *p->cow_old);
    if (!p->dest || !p->taken || !p->cow_old) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_append: out of memory");
    }
    for (uint32_t h = 0; h < H; h++) { /* list capacity first: it changes no content */
        skv_status st = skvi_list_reserve(c, skvi_seq_list(c, s, layer, h), p->fresh_per_head);
        if (st != SKV_OK) {
            plan_free(c, p);
            return st;
        }
    }
    skv_status st = skvi_pool_reserve(c, pool, need);
    if (st != SKV_OK) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, st, "skv_append: %u tokens need %u new pages: %s", n, need,
                         skv_context_last_error(c->ctx));
    }
    for (uint32_t h = 0; h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h);
        uint32_t *d = p->dest + (size_t)h * p->pages_per_head;
        uint32_t j = 0;
        p->cow_old[h] = ~0u;
        if (p->tail) {
            uint32_t e = l->ids[l->n - 1];
            if (pool->refs[e] > 1) {
                p->cow_old[h] = e;
                e = p->taken[p->n_taken++] = skvi_pool_take(pool);
            }
            d[j++] = e;
        }
        for (; j < p->pages_per_head; j++)
            d[j] = p->taken[p->n_taken++] = skvi_pool_take(pool);
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
        st = check_buffer(c, k_mem, k_off, bytes, "k");
        if (st == SKV_OK)
            st = check_buffer(c, v_mem, v_off, bytes, "v");
        if (st != SKV_OK)
            return st;
    }

    append_plan p;
    st = plan(c, s, layer, n, &p);
    if (st != SKV_OK)
        return st;
    cl_mem kbuf = k_mem, vbuf = v_mem, dest = NULL, pos = NULL;
    if (!k_mem) {
        k_off = v_off = 0;
        st = buffer_from_host(c, k_host, bytes, &kbuf);
        if (st == SKV_OK)
            st = buffer_from_host(c, v_host, bytes, &vbuf);
    }
    if (st == SKV_OK)
        st = buffer_from_host(c, p.dest, (size_t)H * p.pages_per_head * sizeof *p.dest, &dest);
    if (st == SKV_OK)
        st = buffer_from_host(c, positions, (size_t)n * sizeof *positions, &pos);
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    if (st == SKV_OK)
        st = skvi_compute_waits(c, num_wait, wait_list, &n_waits, &waits, &owned);

    /* Commit: the sequence changes from here; enqueue errors roll it back. */
    skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
    cl_int e = CL_SUCCESS;
    uint32_t committed = 0;
    for (uint32_t h = 0; st == SKV_OK && h < H; h++, committed++) {
        skvi_page_list *l = skvi_seq_list(c, s, layer, h);
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
        for (uint32_t j = p.tail ? 1 : 0; j < p.pages_per_head; j++)
            l->ids[l->n++] = d[j];
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel k = c->k_append;
        cl_uint pph = p.pages_per_head, fs = p.first_slot, dt = (cl_uint)dtype;
        cl_ulong ko = k_off, vo = v_off;
        e = skvi_pool_set_args(pool, k, 0);
        cl_uint a = SKVI_POOL_MAX_CHUNKS + 1;
        e |= clSetKernelArg(k, a++, sizeof dest, &dest);
        e |= clSetKernelArg(k, a++, sizeof pph, &pph);
        e |= clSetKernelArg(k, a++, sizeof fs, &fs);
        e |= clSetKernelArg(k, a++, sizeof kbuf, &kbuf);
        e |= clSetKernelArg(k, a++, sizeof ko, &ko);
        e |= clSetKernelArg(k, a++, sizeof vbuf, &vbuf);
        e |= clSetKernelArg(k, a++, sizeof vo, &vo);
        e |= clSetKernelArg(k, a++, sizeof dt, &dt);
        e |= clSetKernelArg(k, a++, sizeof pos, &pos);
        size_t global[3] = {D, n, H};
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, k, 3, NULL, global, NULL, n_waits, waits, event);
    }
    if (st == SKV_OK && e != CL_SUCCESS) { /* roll back what was committed */
        for (uint32_t h = 0; h < committed; h++) {
            skvi_page_list *l = skvi_seq_list(c, s, layer, h);
            l->n -= p.fresh_per_head;
            if (p.cow_old[h] != ~0u)
                l->ids[l->n - 1] = p.cow_old[h];
        }
        st = skvi_cl_fail(err, e, "skv_append: enqueue");
    }
    if (st == SKV_OK) {
        for (uint32_t h = 0; h < H; h++)
            if (p.cow_old[h] != ~0u)
                skvi_pool_unref(pool, p.cow_old[h]); /* the sequence's reference moved to the copy */
        s->len[layer] += n;
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
    if (pos)
        clReleaseMemObject(pos);
    plan_free(c, &p);
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
