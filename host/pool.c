/* Page pools: one arena per (tier, memory kind) of fixed-size pages. Device pools live in
 * device memory, host pools in pinned host memory (CL_MEM_ALLOC_HOST_PTR). A pool grows
 * by whole chunk buffers, never moving a page, up to the cache's budget for its memory
 * kind; pages are handed out from a free stack and reference-counted (forks share them). */
#include <string.h>

#include "cache_internal.h"

skv_status skvi_pool_init(skv_cache *c, skvi_pool *p, skv_memory mem, uint64_t page_bytes)
{
    memset(p, 0, sizeof *p);
    p->mem = mem;
    p->page_bytes = page_bytes;
    uint64_t budget_pages = c->budget[mem] / page_bytes;
    uint64_t max_chunk_pages = c->ctx->profile.max_alloc_bytes / page_bytes;
    uint64_t ppc = (budget_pages + SKVI_POOL_MAX_CHUNKS - 1) / SKVI_POOL_MAX_CHUNKS;
    if (ppc == 0)
        ppc = 1;
    if (ppc > max_chunk_pages) /* the budget is capped by what 8 allocations can hold */
        ppc = max_chunk_pages;
    if (ppc * SKVI_POOL_MAX_CHUNKS >= SKVI_HOST_BIT)
        ppc = (SKVI_HOST_BIT - 1) / SKVI_POOL_MAX_CHUNKS;
    p->pages_per_chunk = (uint32_t)ppc;
    return SKV_OK;
}

void skvi_pool_release(skv_cache *c, skvi_pool *p)
{
    for (uint32_t i = 0; i < p->n_chunks; i++)
        clReleaseMemObject(p->chunk[i]);
    skvi_free(c->ctx->alloc, p->free_ids);
    skvi_free(c->ctx->alloc, p->refs);
    skvi_free(c->ctx->alloc, p->gen);
    memset(p, 0, sizeof *p);
}

static skv_status grow(skv_cache *c, skvi_pool *p)
{
    skv_context *ctx = c->ctx;
    uint64_t room = c->budget[p->mem] - c->allocated[p->mem];
    uint64_t pages = p->pages_per_chunk;
    if (room / p->page_bytes < pages)
        pages = room / p->page_bytes;
    if (p->n_chunks == SKVI_POOL_MAX_CHUNKS || pages == 0)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY,
                         "%s page budget exhausted: %llu of %llu bytes allocated, %u chunks",
                         p->mem == SKV_MEM_DEVICE ? "device" : "host",
                         (unsigned long long)c->allocated[p->mem], (unsigned long long)c->budget[p->mem],
                         p->n_chunks);
    if (!p->refs) { /* id bookkeeping for every chunk the pool may ever have */
        size_t max_ids = (size_t)p->pages_per_chunk * SKVI_POOL_MAX_CHUNKS;
        p->refs = skvi_calloc(ctx->alloc, max_ids, sizeof *p->refs);
        p->gen = skvi_calloc(ctx->alloc, max_ids, sizeof *p->gen);
        p->free_ids = skvi_calloc(ctx->alloc, max_ids, sizeof *p->free_ids);
        if (!p->refs || !p->gen || !p->free_ids) {
            skvi_free(ctx->alloc, p->refs);
            skvi_free(ctx->alloc, p->gen);
            skvi_free(ctx->alloc, p->free_ids);
            p->refs = p->gen = p->free_ids = NULL;
            return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "page pool: out of host memory");
        }
    }
    cl_int e;
    cl_mem_flags flags = CL_MEM_READ_WRITE | (p->mem == SKV_MEM_HOST ? CL_MEM_ALLOC_HOST_PTR : 0);
    cl_mem buf = clCreateBuffer(ctx->cl, flags, pages * p->page_bytes, NULL, &e);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "clCreateBuffer(page pool chunk)");
    if (ctx->poison) {
        e = skvi_poison(ctx, buf, pages * p->page_bytes);
        if (e != CL_SUCCESS) {
            clReleaseMemObject(buf);
            return skvi_cl_fail(ctx->error, e, "clEnqueueFillBuffer(poison page pool chunk)");
        }
    }
    uint32_t first = p->n_chunks * p->pages_per_chunk;
    p->chunk[p->n_chunks] = buf;
    p->chunk_pages[p->n_chunks] = (uint32_t)pages;
    p->n_chunks++;
    /* Push in reverse so the lowest ids come out first. */
    for (uint32_t i = (uint32_t)pages; i-- > 0;)
        p->free_ids[p->n_free++] = first + i;
    c->allocated[p->mem] += pages * p->page_bytes;
    return SKV_OK;
}

skv_status skvi_pool_reserve(skv_cache *c, skvi_pool *p, uint32_t n)
{
    while (p->n_free < n) {
        skv_status st = grow(c, p);
        if (st != SKV_OK)
            return st;
    }
    return SKV_OK;
}

uint32_t skvi_pool_take(skvi_pool *p)
{
    uint32_t id = p->free_ids[--p->n_free];
    p->refs[id] = 1;
    p->gen[id]++;
    p->used++;
    return id;
}

void skvi_pool_ref(skvi_pool *p, uint32_t id) { p->refs[id]++; }

void skvi_pool_unref(skvi_pool *p, uint32_t id)
{
    if (--p->refs[id] == 0) {
        p->free_ids[p->n_free++] = id;
        p->used--;
    }
}

cl_mem skvi_pool_locate(const skvi_pool *p, uint32_t id, size_t *offset)
{
    *offset = (size_t)(id % p->pages_per_chunk) * p->page_bytes;
    return p->chunk[id / p->pages_per_chunk];
}

void skvi_pool_bind(skvi_args *a, const skvi_pool *p)
{
    for (cl_uint i = 0; i < SKVI_POOL_MAX_CHUNKS; i++)
        skvi_arg_mem(a, p->chunk[i < p->n_chunks ? i : 0]);
    skvi_arg_u32(a, p->pages_per_chunk);
}
