/* Decode's workspace: device buffers and the block tables' staging, grown
 * geometrically and kept, so that a decode step after warm-up creates no OpenCL object
 * (skvi_decode_ws in cache_internal.h). */
#include <string.h>

#include "cache_internal.h"

skv_status skvi_ws_buffer(skv_cache *c, int i, size_t bytes, cl_mem *out)
{
    skvi_decode_ws *w = &c->ws;
    if (w->buf[i] && w->bytes[i] >= bytes) {
        *out = w->buf[i];
        return SKV_OK;
    }
    size_t grown = w->bytes[i] * 2 > bytes ? w->bytes[i] * 2 : bytes;
    cl_int e = CL_SUCCESS;
    cl_mem m = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, grown, NULL, &e);
    if (e == CL_SUCCESS && c->ctx->poison && (e = skvi_poison_enqueue(c->ctx, m, grown)) != CL_SUCCESS)
        clReleaseMemObject(m);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "decode attention: clCreateBuffer");
    w->objects++;
    /* replacing a buffer enqueued kernels still use is safe: OpenCL keeps it until
     * they complete */
    if (w->buf[i])
        clReleaseMemObject(w->buf[i]);
    w->buf[i] = m;
    w->bytes[i] = grown;
    *out = m;
    return SKV_OK;
}

/* Whether the write that read the slot has run (or failed: it reads nothing more). */
static int slot_free(skvi_stage *st)
{
    if (!st->fence)
        return 1;
    const cl_int status = skvi_event_status(st->fence);
    if (status != CL_COMPLETE && status >= 0)
        return 0;
    clReleaseEvent(st->fence);
    st->fence = NULL;
    return 1;
}

static void release_tables(skv_cache *c)
{
    skvi_decode_ws *w = &c->ws;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int k = 0; k < 3; k++)
            if (w->sub[t][k]) {
                clReleaseMemObject(w->sub[t][k]);
                w->sub[t][k] = NULL;
            }
    if (w->table)
        clReleaseMemObject(w->table);
    w->table = NULL;
    w->cap_rows = 0;
    memset(w->cap_pages, 0, sizeof w->cap_pages);
    w->cap_q = w->off_q = 0;
    w->words = 0;
}

/* Tables for rows and pages[t] (twice what is asked, so that a growing context
 * recreates them O(log n) times): a fresh layout, device table, sub-buffers, staging. */
static skv_status grow_tables(skv_cache *c, uint64_t rows, const uint64_t *pages, size_t q_bytes)
{
    skvi_decode_ws *w = &c->ws;
    cl_uint align_bits = 1024;
    clGetDeviceInfo(c->ctx->device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL);
    const size_t align = align_bits / 32 > 0 ? align_bits / 32 : 1; /* in words */
    uint64_t cap_rows = rows * 2 > w->cap_rows ? rows * 2 : w->cap_rows, cap_pages[SKV_TIER_COUNT];
    uint64_t words = 0;
    size_t off[SKV_TIER_COUNT][3] = {{0}};
    uint64_t len[SKV_TIER_COUNT][3] = {{0}}; /* indptr, indices, lens; 0: tier not enabled */
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        cap_pages[t] = 0;
        if (!c->k_decode[t])
            continue;
        cap_pages[t] = pages[t] * 2 > w->cap_pages[t] ? pages[t] * 2 : w->cap_pages[t];
        if (cap_pages[t] == 0)
            cap_pages[t] = 1;
        len[t][0] = cap_rows + 1, len[t][1] = cap_pages[t], len[t][2] = cap_rows;
        for (int k = 0; k < 3; k++) {
            words = (words + align - 1) / align * align;
            off[t][k] = (size_t)words;
            words += len[t][k];
        }
    }
    const uint64_t cap_q = (q_bytes + 3) / 4 * 2 > w->cap_q ? (q_bytes + 3) / 4 * 2 : w->cap_q;
    const uint64_t off_q = (words + align - 1) / align * align;
    words = off_q + cap_q;
    size_t bytes = 0;
    if (words > SIZE_MAX || !skvi_mul_ok((size_t)words, 4, &bytes))
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "decode attention: batch too large");
    release_tables(c);
    cl_int e = CL_SUCCESS;
    w->table = clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY, bytes, NULL, &e);
    w->objects += e == CL_SUCCESS;
    for (int t = 0; e == CL_SUCCESS && t < SKV_TIER_COUNT; t++)
        for (int k = 0; e == CL_SUCCESS && cap_pages[t] && k < 3; k++) {
            cl_buffer_region r = {off[t][k] * 4, (size_t)len[t][k] * 4};
            w->sub[t][k] = clCreateSubBuffer(w->table, CL_MEM_READ_ONLY, CL_BUFFER_CREATE_TYPE_REGION, &r, &e);
            w->objects += e == CL_SUCCESS;
        }
    if (e != CL_SUCCESS) {
        release_tables(c);
        return skvi_cl_fail(c->ctx->error, e, "decode attention: block tables");
    }
    w->cap_rows = cap_rows;
    memcpy(w->cap_pages, cap_pages, sizeof cap_pages);
    memcpy(w->off, off, sizeof off);
    w->off_q = (size_t)off_q;
    w->cap_q = (size_t)cap_q;
    w->words = (size_t)words;
    return SKV_OK;
}

skv_status skvi_ws_stage(skv_cache *c, uint64_t rows, const uint64_t *pages, size_t q_bytes, uint32_t *slot)
{
    skvi_decode_ws *w = &c->ws;
    int fits = w->table && rows <= w->cap_rows && q_bytes <= w->cap_q * 4;
    for (int t = 0; fits && t < SKV_TIER_COUNT; t++)
        fits = pages[t] == 0 || pages[t] <= w->cap_pages[t];
    if (!fits) {
        skv_status st = grow_tables(c, rows, pages, q_bytes);
        if (st != SKV_OK)
            return st;
    }
    size_t i = 0;
    while (i < w->n_stage && !slot_free(&w->stage[i]))
        i++;
    if (i == w->n_stage) { /* every slot's write is still queued: one more slot */
        if (w->n_stage == UINT32_MAX ||
            skvi_array_reserve(c->ctx->alloc, (void **)&w->stage, &w->cap_stage, w->n_stage, w->n_stage + 1,
                               sizeof *w->stage, 4) != 0)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "decode attention: out of memory");
        w->n_stage++;
    }
    skvi_stage *st = &w->stage[i];
    if (st->cap < w->words) { /* free: nothing reads it */
        uint32_t *grown = skvi_alloc(c->ctx->alloc, w->words * sizeof *grown);
        if (!grown)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "decode attention: out of memory");
        skvi_free(c->ctx->alloc, st->words);
        st->words = grown;
        st->cap = w->words;
    }
    *slot = (uint32_t)i;
    return SKV_OK;
}

skv_status skvi_ws_upload(skv_cache *c, uint32_t slot, size_t words)
{
    skvi_decode_ws *w = &c->ws;
    cl_int e = clEnqueueWriteBuffer(c->ctx->queue, w->table, CL_FALSE, 0, words * 4, w->stage[slot].words, 0, NULL,
                                    NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(c->ctx->error, e, "decode attention: clEnqueueWriteBuffer");
}

void skvi_ws_fence(skv_cache *c, uint32_t slot, cl_event ev)
{
    skvi_stage *st = &c->ws.stage[slot];
    if (st->fence)
        clReleaseEvent(st->fence);
    st->fence = ev;
    if (ev)
        clRetainEvent(ev);
}

void skvi_ws_release(skv_cache *c)
{
    skvi_decode_ws *w = &c->ws;
    release_tables(c);
    for (size_t i = 0; i < w->n_stage; i++) {
        if (w->stage[i].fence) { /* its write may still read the slot */
            clWaitForEvents(1, &w->stage[i].fence);
            clReleaseEvent(w->stage[i].fence);
        }
        skvi_free(c->ctx->alloc, w->stage[i].words);
    }
    skvi_free(c->ctx->alloc, w->stage);
    for (int i = 0; i < SKVI_WS_COUNT; i++)
        if (w->buf[i])
            clReleaseMemObject(w->buf[i]);
    skvi_free(c->ctx->alloc, w->host_logits);
    memset(w, 0, sizeof *w);
}
