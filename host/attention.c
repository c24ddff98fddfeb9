/* Decode attention over the paged cache: block tables in CSR form, the split-K plan,
 * and the two kernels (cl/decode_f16.cl per chunk, cl/decode_merge.cl across chunks). */
#include <math.h>
#include <string.h>

#include "cache_internal.h"

typedef struct decode_plan {
    uint32_t *indptr;  /* [B*H + 1] */
    uint32_t *indices; /* page ids */
    uint32_t *lens;    /* [B*H] tokens */
    uint32_t tiles_per_chunk, n_chunks;
} decode_plan;

static void plan_free(skv_cache *c, decode_plan *p)
{
    skvi_free(c->ctx->alloc, p->indptr);
    skvi_free(c->ctx->alloc, p->indices);
    skvi_free(c->ctx->alloc, p->lens);
}

/* Chunks per (sequence, kv-head): enough work-groups to fill the device about four
 * times over, never more than one per tile. */
static void split(const skv_cache *c, uint32_t B, uint64_t max_len, decode_plan *p)
{
    uint64_t tiles = (max_len + c->tile - 1) / c->tile;
    uint64_t groups = (uint64_t)B * c->desc.kv_heads;
    uint64_t want = 4ull * c->ctx->profile.compute_units;
    uint64_t chunks = (want + groups - 1) / groups;
    if (chunks > tiles)
        chunks = tiles;
    if (chunks == 0)
        chunks = 1;
    p->tiles_per_chunk = (uint32_t)((tiles + chunks - 1) / chunks);
    p->n_chunks = (uint32_t)((tiles + p->tiles_per_chunk - 1) / p->tiles_per_chunk);
}

static skv_status make_plan(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t B, const char *fn,
                            decode_plan *p)
{
    const uint32_t H = c->desc.kv_heads;
    memset(p, 0, sizeof *p);
    uint64_t total_pages = 0, max_len = 0;
    for (uint32_t b = 0; b < B; b++) {
        skvi_seq *s = NULL;
        skv_status st = skvi_seq_get(c, seqs[b], fn, &s);
        if (st != SKV_OK)
            return st;
        uint64_t len = s->len[layer];
        if (len == 0)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u holds no tokens for layer %u", fn,
                             seqs[b], layer);
        for (uint32_t h = 0; h < H; h++) {
            const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
            for (uint32_t j = 0; j < l->n; j++)
                if (l->ids[j] & SKVI_HOST_BIT)
                    return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                                     "%s: sequence %u has pages of layer %u in host memory: skv_seq_fetch them first",
                                     fn, seqs[b], layer);
            total_pages += l->n;
        }
        if (len > max_len)
            max_len = len;
    }
    if (total_pages >= 0xFFFFFFFFull)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: batch too large", fn);
    p->indptr = skvi_calloc(c->ctx->alloc, (size_t)B * H + 1, sizeof *p->indptr);
    p->indices = skvi_calloc(c->ctx->alloc, total_pages ? total_pages : 1, sizeof *p->indices);
    p->lens = skvi_calloc(c->ctx->alloc, (size_t)B * H, sizeof *p->lens);
    if (!p->indptr || !p->indices || !p->lens) {
        plan_free(c, p);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    uint32_t k = 0;
    for (uint32_t b = 0; b < B; b++) {
        skvi_seq *s = &c->seqs[seqs[b]];
        for (uint32_t h = 0; h < H; h++) {
            const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
            p->indptr[b * H + h] = k;
            p->lens[b * H + h] = l->tokens;
            memcpy(p->indices + k, l->ids, l->n * sizeof *l->ids);
            k += l->n;
        }
    }
    p->indptr[(size_t)B * H] = k;
    split(c, B, max_len, p);
    return SKV_OK;
}

static cl_mem upload(skv_cache *c, const void *src, size_t bytes, cl_int *e)
{
    return clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)src, e);
}

static skv_status check_mem(skv_cache *c, cl_mem m, size_t offset, size_t bytes, const char *what)
{
    size_t size = 0;
    cl_int e = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof size, &size, NULL);
    if (e != CL_SUCCESS || offset > size || size - offset < bytes)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_attention_decode_cl: %s is not a cl_mem of at least %zu bytes past offset %zu", what,
                         bytes, offset);
    return SKV_OK;
}

static skv_status decode_impl(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t B, skv_dtype q_dtype,
                              const void *q_host, cl_mem q_mem, size_t q_off, float scale, skv_dtype out_dtype,
                              void *out_host, cl_mem out_mem, size_t out_off, cl_uint num_wait,
                              const cl_event *wait_list, cl_event *event, const char *fn)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    char *err = c->ctx->error;
    if (layer >= c->desc.layers)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u of %u", fn, layer, c->desc.layers);
    if (!seqs || B == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: no sequences (seqs NULL or n_seqs 0)", fn);
    if ((q_dtype != SKV_F32 && q_dtype != SKV_F16) || (out_dtype != SKV_F32 && out_dtype != SKV_F16))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: q and out must be SKV_F32 or SKV_F16", fn);
    if ((!q_host && !q_mem) || (!out_host && !out_mem))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: q or out is NULL", fn);
    if (!isfinite(scale))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: scale is not finite", fn);
    if ((num_wait == 0) != (wait_list == NULL))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: num_wait and wait_list disagree", fn);
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim, G = c->group;
    size_t q_bytes = (size_t)B * c->desc.q_heads * D * (q_dtype == SKV_F32 ? 4 : 2);
    size_t out_bytes = (size_t)B * c->desc.q_heads * D * (out_dtype == SKV_F32 ? 4 : 2);
    skv_status st = SKV_OK;
    if (q_mem)
        st = check_mem(c, q_mem, q_off, q_bytes, "q");
    if (st == SKV_OK && out_mem)
        st = check_mem(c, out_mem, out_off, out_bytes, "out");
    if (st != SKV_OK)
        return st;

    decode_plan p;
    st = make_plan(c, layer, seqs, B, fn, &p);
    if (st != SKV_OK)
        return st;
    cl_int e = CL_SUCCESS;
    cl_mem indptr = upload(c, p.indptr, ((size_t)B * H + 1) * 4, &e);
    cl_mem indices = e == CL_SUCCESS ? upload(c, p.indices, (size_t)(p.indptr[(size_t)B * H] ? p.indptr[(size_t)B * H] : 1) * 4, &e) : NULL;
    cl_mem lens = e == CL_SUCCESS ? upload(c, p.lens, (size_t)B * H * 4, &e) : NULL;
    size_t part_bytes = (size_t)B * H * p.n_chunks * G * (D + 2) * sizeof(float);
    cl_mem partials = e == CL_SUCCESS ? clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, part_bytes, NULL, &e) : NULL;
    cl_mem qbuf = q_mem, obuf = out_mem;
    if (e == CL_SUCCESS && !q_mem) {
        qbuf = upload(c, q_host, q_bytes, &e);
        q_off = 0;
    }
    if (e == CL_SUCCESS && !out_mem) {
        obuf = clCreateBuffer(c->ctx->cl, CL_MEM_WRITE_ONLY, out_bytes, NULL, &e);
        out_off = 0;
    }
    if (e != CL_SUCCESS)
        st = skvi_cl_fail(err, e, "decode attention: clCreateBuffer");
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    if (st == SKV_OK)
        st = skvi_compute_waits(c, num_wait, wait_list, &n_waits, &waits, &owned);
    if (st == SKV_OK) {
        cl_kernel k = c->k_decode;
        cl_uint a = SKVI_POOL_MAX_CHUNKS + 1, h_arg = H, qd = (cl_uint)q_dtype, tpc = p.tiles_per_chunk,
                nc = p.n_chunks;
        cl_ulong qo = q_off;
        e = skvi_pool_set_args(&c->pools[SKV_TIER_F16][SKV_MEM_DEVICE], k, 0);
        e |= clSetKernelArg(k, a++, sizeof indptr, &indptr);
        e |= clSetKernelArg(k, a++, sizeof indices, &indices);
        e |= clSetKernelArg(k, a++, sizeof lens, &lens);
        e |= clSetKernelArg(k, a++, sizeof h_arg, &h_arg);
        e |= clSetKernelArg(k, a++, sizeof qbuf, &qbuf);
        e |= clSetKernelArg(k, a++, sizeof qo, &qo);
        e |= clSetKernelArg(k, a++, sizeof qd, &qd);
        e |= clSetKernelArg(k, a++, sizeof scale, &scale);
        e |= clSetKernelArg(k, a++, sizeof tpc, &tpc);
        e |= clSetKernelArg(k, a++, sizeof nc, &nc);
        e |= clSetKernelArg(k, a++, sizeof partials, &partials);
        size_t wg = c->cpu_variant ? 1 : c->tile;
        size_t global[2] = {(size_t)p.n_chunks * wg, (size_t)B * H}, local[2] = {wg, 1};
        cl_event first = NULL;
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, k, 2, NULL, global, local, n_waits, waits,
                                       c->ctx->profiling ? &first : NULL);
        cl_kernel m = c->k_merge;
        cl_uint od = (cl_uint)out_dtype;
        cl_ulong oo = out_off;
        a = 0;
        if (e == CL_SUCCESS) {
            e |= clSetKernelArg(m, a++, sizeof partials, &partials);
            e |= clSetKernelArg(m, a++, sizeof nc, &nc);
            e |= clSetKernelArg(m, a++, sizeof h_arg, &h_arg);
            e |= clSetKernelArg(m, a++, sizeof obuf, &obuf);
            e |= clSetKernelArg(m, a++, sizeof oo, &oo);
            e |= clSetKernelArg(m, a++, sizeof od, &od);
        }
        size_t mglobal[2] = {D, (size_t)B * c->desc.q_heads};
        cl_event done = NULL;
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, m, 2, NULL, mglobal, NULL, 0, NULL, &done);
        if (e == CL_SUCCESS && out_host)
            e = clEnqueueReadBuffer(c->ctx->queue, obuf, CL_TRUE, 0, out_bytes, out_host, 0, NULL, NULL);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(err, e, "decode attention: enqueue");
        if (st == SKV_OK && first && done) { /* kept for skv_cache_last_decode_ms */
            for (int i = 0; i < 2; i++)
                if (c->last_decode[i])
                    clReleaseEvent(c->last_decode[i]);
            c->last_decode[0] = first;
            c->last_decode[1] = done;
            clRetainEvent(done);
        } else if (first) {
            clReleaseEvent(first);
        }
        if (done && event && st == SKV_OK)
            *event = done;
        else if (done)
            clReleaseEvent(done);
    }
    skvi_free(c->ctx->alloc, owned);
    cl_mem bufs[] = {indptr, indices, lens, partials, qbuf != q_mem ? qbuf : NULL, obuf != out_mem ? obuf : NULL};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    plan_free(c, &p);
    return st;
}

skv_status skv_attention_decode(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t n_seqs,
                                skv_dtype q_dtype, const void *q, float scale, skv_dtype out_dtype, void *out)
{
    if (!q || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_decode: q or out is NULL");
    return decode_impl(c, layer, seqs, n_seqs, q_dtype, q, NULL, 0, scale, out_dtype, out, NULL, 0, 0, NULL, NULL,
                       "skv_attention_decode");
}

skv_status skv_attention_decode_cl(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t n_seqs,
                                   skv_dtype q_dtype, cl_mem q, size_t q_offset, float scale, skv_dtype out_dtype,
                                   cl_mem out, size_t out_offset, cl_uint num_wait, const cl_event *wait_list,
                                   cl_event *event)
{
    if (!q || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_decode_cl: q or out is NULL");
    return decode_impl(c, layer, seqs, n_seqs, q_dtype, NULL, q, q_offset, scale, out_dtype, NULL, out, out_offset,
                       num_wait, wait_list, event, "skv_attention_decode_cl");
}

skv_status skv_cache_last_decode_ms(skv_cache *c, double *ms)
{
    skvi_clear_error();
    if (!c || !ms)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_last_decode_ms: cache or ms is NULL");
    if (!c->ctx->profiling)
        return skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED,
                         "skv_cache_last_decode_ms: the context's queue has no profiling (enable_profiling)");
    if (!c->last_decode[0])
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_cache_last_decode_ms: no decode call yet");
    cl_ulong t0 = 0, t1 = 0;
    cl_int e = clWaitForEvents(2, c->last_decode);
    if (e == CL_SUCCESS)
        e = clGetEventProfilingInfo(c->last_decode[0], CL_PROFILING_COMMAND_START, sizeof t0, &t0, NULL);
    if (e == CL_SUCCESS)
        e = clGetEventProfilingInfo(c->last_decode[1], CL_PROFILING_COMMAND_END, sizeof t1, &t1, NULL);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "skv_cache_last_decode_ms");
    *ms = (double)(t1 - t0) * 1e-6;
    return SKV_OK;
}
