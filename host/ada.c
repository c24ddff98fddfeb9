/* ADA tiers in a cache: the codec tables and Hadamard signs on the device, the encoder
 * kernels, and skv_seq_quantize, which moves full F16 pages of a sequence into a tier. */
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"
#include "layout.h"

/* The float table the ADA kernels read (its layout: cl/common.h). */
static size_t pack_params(const skv_ref_ada_params *p, float *out)
{
    const unsigned NR = 1u << p->radius_bits, NS = 1u << p->angle_bits;
    size_t n = 0;
    for (unsigned k = 0; k < NR; k++)
        out[n++] = p->radius[k];
    for (unsigned k = 0; k + 1 < NR; k++)
        out[n++] = p->radius_bound_sq[k];
    for (unsigned k = 0; k < NS / 2; k++)
        out[n++] = p->bound_cos[k];
    for (unsigned k = 0; k < NS / 2; k++)
        out[n++] = p->bound_sin[k];
    for (unsigned k = 0; k < NS; k++)
        out[n++] = p->centre_cos[k];
    for (unsigned k = 0; k < NS; k++)
        out[n++] = p->centre_sin[k];
    out[n++] = p->transform_scale;
    out[n++] = p->rho_scale;
    return n;
}

/* Build defines of a tier's kernels. */
void skvi_ada_defines(const skv_cache *c, skv_tier t, char *out, size_t n)
{
    const skvi_tier_desc *d = &skvi_tiers[t];
    snprintf(out, n, "-DD=%u -DP=%u -DRB=%u -DAB=%u -DKW=%u -DVB=%u -DVG=%u", c->desc.head_dim, c->desc.page_tokens,
             d->radius_bits, d->angle_bits, c->ada[t].key_words, d->value_bits, d->value_group);
}

/* Floats of one (sequence, kv-head)'s query tables for tier t, in the layout of the tier's
 * decode variant (cl/common.h: by slot for decode_gpu, by lane for decode_cpu). */
size_t skvi_ada_table_floats(const skv_cache *c, skv_tier t)
{
    const unsigned rb = skvi_tiers[t].radius_bits, ab = skvi_tiers[t].angle_bits;
    const size_t row = c->decode[t].schedule == SKV_SCHEDULE_LANES ? SKV_LANE_ROW(rb, ab, c->decode[t].lanes)
                                                                   : SKV_SLOT_ROW(rb, ab); /* floats per (pair, q-head) */
    return (size_t)c->desc.head_dim / 2 * c->group * row;
}

uint64_t skvi_ada_codebook(const skv_cache *c, skv_tier t)
{
    if (t == SKV_TIER_F16 || !(c->desc.tiers & (1u << t)))
        return 0;
    float table[257];
    size_t n = pack_params(&c->ada[t], table);
    table[n++] = (float)(skvi_tiers[t].value_bits * 1000 + skvi_tiers[t].value_group); /* the value codec too */
    return skvi_hash64(table, n * sizeof *table);
}

skv_status skvi_ada_init(skv_cache *c)
{
    skv_context *ctx = c->ctx;
    const uint32_t D = c->desc.head_dim;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        c->ada_logit_correction[t] = 1.0f;
    if (!(c->desc.tiers & ~(1u << SKV_TIER_F16)))
        return SKV_OK;
    size_t n_signs = (size_t)c->desc.layers * c->desc.kv_heads * D;
    int8_t *signs = skvi_alloc(ctx->alloc, n_signs);
    if (!signs)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
    for (uint32_t l = 0; l < c->desc.layers; l++)
        for (uint32_t h = 0; h < c->desc.kv_heads; h++)
            skv_ref_ada_signs_seeded(c->desc.rotation_seed, l, h, D, signs + ((size_t)l * c->desc.kv_heads + h) * D);
    cl_int e;
    c->signs = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n_signs, signs, &e);
    skvi_free(ctx->alloc, signs);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(ctx->error, e, "skv_cache_create: clCreateBuffer(signs)");
    for (int t = SKV_TIER_F16 + 1; t < SKV_TIER_COUNT; t++) {
        if (!(c->desc.tiers & (1u << t)))
            continue;
        const skvi_tier_desc *d = &skvi_tiers[t];
        skv_ref_ada_params_init(&c->ada[t], D, d->radius_bits, d->angle_bits);
        float table[256];
        size_t n = pack_params(&c->ada[t], table);
        c->ada_params[t] = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * sizeof *table, table, &e);
        if (e != CL_SUCCESS)
            return skvi_cl_fail(ctx->error, e, "skv_cache_create: clCreateBuffer(ADA tables)");
        char defs[256];
        skvi_ada_defines(c, (skv_tier)t, defs, sizeof defs);
        skv_status st = skvi_kernel_create(ctx, "ada_encode.cl", defs, "ada_encode", &c->k_encode[t]);
        if (st != SKV_OK)
            return st;
    }
    return SKV_OK;
}

void skvi_ada_release(skv_cache *c)
{
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        if (c->k_encode[t])
            clReleaseKernel(c->k_encode[t]);
        if (c->k_query[t])
            clReleaseKernel(c->k_query[t]);
        if (c->ada_params[t])
            clReleaseMemObject(c->ada_params[t]);
    }
    if (c->signs)
        clReleaseMemObject(c->signs);
}

/* What one (layer, kv-head) contributes to a quantisation. */
typedef struct q_list {
    uint32_t first, count;  /* F16 list entries [first, first + count) move */
    uint32_t tail_fill;     /* tokens in the tier list's partial tail page */
    uint32_t cow_old;       /* the tier tail page replaced by a private copy, or ~0 */
    uint32_t fresh;         /* new tier pages */
    uint32_t dest0;         /* index of its first dest page in the dest array */
} q_list;

skv_status skv_seq_quantize(skv_cache *c, skv_seq_id seq, uint64_t token_begin, uint64_t token_end, skv_tier tier)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_seq_quantize: cache is NULL");
    skv_context *ctx = c->ctx;
    const skv_allocator *a = ctx->alloc;
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_seq_quantize", &s);
    if (st != SKV_OK)
        return st;
    if (s->hetero)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_seq_quantize: HeteroCache runs on sequence %u and places its tokens itself", seq);
    if ((unsigned)tier >= SKV_TIER_COUNT || tier == SKV_TIER_F16 || !(c->desc.tiers & (1u << tier)))
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_quantize: tier %d is not an ADA tier of this cache",
                         (int)tier);
    if (token_begin > token_end)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_seq_quantize: token_begin > token_end");
    const uint32_t P = c->desc.page_tokens, H = c->desc.kv_heads;
    const size_t n_lh = (size_t)c->desc.layers * H;
    skvi_pool *f16 = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE], *tp = &c->pools[tier][SKV_MEM_DEVICE];
    st = skvi_stats_flush(c, s, ~0u); /* pending tokens are read from F16 pages: before they move */
    /* a deferred compression must not read pages this rewrites: the sequence's next
     * appends defer it again, after the rewrite */
    skvi_rdr_ungate(c, s, ~0u);
    if (st != SKV_OK)
        return st;

    q_list *ql = skvi_calloc(a, n_lh, sizeof *ql);
    if (!ql)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_quantize: out of memory");
    uint64_t jobs = 0;
    uint32_t need = 0;  /* pages to take from the tier's pool */
    uint32_t slots = 0; /* destination pages: those, and the tier's own partial tails */
    for (size_t i = 0; i < n_lh; i++) {
        const skvi_page_list *l = &s->lists[i * SKV_TIER_COUNT + SKV_TIER_F16];
        const skvi_page_list *tl = &s->lists[i * SKV_TIER_COUNT + tier];
        uint64_t first = (token_begin + P - 1) / P, last = (token_end < l->tokens ? token_end : l->tokens) / P;
        ql[i].cow_old = ~0u;
        if (last <= first)
            continue;
        for (uint64_t j = first; j < last; j++)
            if (l->ids[j] & SKVI_HOST_BIT) {
                skvi_free(a, ql);
                return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                                 "skv_seq_quantize: pages in the range are in host memory: skv_seq_fetch them first");
            }
        ql[i].first = (uint32_t)first;
        ql[i].count = (uint32_t)(last - first);
        ql[i].tail_fill = tl->tokens % P;
        uint32_t moved = ql[i].count * P;
        ql[i].fresh = (ql[i].tail_fill + moved + P - 1) / P - (ql[i].tail_fill ? 1 : 0);
        if (ql[i].tail_fill && tp->refs && tp->refs[tl->ids[tl->n - 1] & ~SKVI_HOST_BIT] > 1) {
            ql[i].cow_old = tl->ids[tl->n - 1];
            need++;
        }
        need += ql[i].fresh;
        slots += ql[i].fresh + (ql[i].tail_fill ? 1 : 0);
        jobs += moved;
    }
    if (jobs == 0) {
        skvi_free(a, ql);
        return SKV_OK;
    }
    /* Everything that can fail, before the sequence changes. */
    uint32_t *dest = skvi_calloc(a, slots, sizeof *dest);
    uint32_t *job = skvi_calloc(a, jobs, 4 * sizeof *job);
    cl_mem jobs_buf = NULL;
    uint32_t taken = 0;
    if (!dest || !job)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_seq_quantize: out of memory");
    for (size_t i = 0; st == SKV_OK && i < n_lh; i++)
        if (ql[i].count)
            st = skvi_list_reserve(c, &s->lists[i * SKV_TIER_COUNT + tier], ql[i].fresh);
    if (st == SKV_OK) {
        st = skvi_pool_reserve(c, tp, need);
        if (st != SKV_OK)
            st = skvi_fail(ctx->error, st, "skv_seq_quantize: %u pages of tier %s: %s", need, skvi_tiers[tier].name,
                           skv_context_last_error(ctx));
    }
    if (st == SKV_OK) { /* take the pages and write the job table */
        uint64_t k = 0;
        for (size_t i = 0; i < n_lh; i++) {
            if (!ql[i].count)
                continue;
            const skvi_page_list *l = &s->lists[i * SKV_TIER_COUNT + SKV_TIER_F16];
            const skvi_page_list *tl = &s->lists[i * SKV_TIER_COUNT + tier];
            ql[i].dest0 = taken;
            if (ql[i].tail_fill) /* the tier list's partial tail page, or its private copy */
                dest[taken++] = ql[i].cow_old != ~0u ? skvi_pool_take(tp) : tl->ids[tl->n - 1];
            for (uint32_t f = 0; f < ql[i].fresh; f++)
                dest[taken++] = skvi_pool_take(tp);
            for (uint32_t pj = 0; pj < ql[i].count; pj++)
                for (uint32_t slot = 0; slot < P; slot++, k++) {
                    uint32_t d = ql[i].tail_fill + pj * P + slot;
                    job[4 * k] = l->ids[ql[i].first + pj];
                    job[4 * k + 1] = slot | (d % P) << 16;
                    job[4 * k + 2] = dest[ql[i].dest0 + d / P];
                    job[4 * k + 3] = (uint32_t)i;
                }
        }
        cl_int e;
        jobs_buf = clCreateBuffer(ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, jobs * 16, job, &e);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "skv_seq_quantize: clCreateBuffer");
    }
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    if (st == SKV_OK)
        st = skvi_compute_waits(c, NULL, 0, 0, NULL, &n_waits, &waits, &owned);
    cl_int e = CL_SUCCESS;
    for (size_t i = 0; st == SKV_OK && e == CL_SUCCESS && i < n_lh; i++) /* private copies of shared tails */
        if (ql[i].cow_old != ~0u) {
            size_t so, dof;
            cl_mem src = skvi_pool_locate(tp, ql[i].cow_old, &so), dst = skvi_pool_locate(tp, dest[ql[i].dest0], &dof);
            e = clEnqueueCopyBuffer(ctx->queue, src, dst, so, dof, tp->page_bytes, n_waits, waits, NULL);
            n_waits = 0;
            waits = NULL;
        }
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel k = c->k_encode[tier];
        skvi_args args = skvi_args_begin(k, 0);
        skvi_pool_bind(&args, f16);
        skvi_pool_bind(&args, tp);
        skvi_arg_mem(&args, jobs_buf);
        skvi_arg_mem(&args, c->signs);
        skvi_arg_mem(&args, c->ada_params[tier]);
        size_t global = (size_t)jobs;
        e = skvi_args_end(&args);
        if (e != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &args, "skv_seq_quantize: enqueue");
        else
            e = skvi_enqueue_items(ctx->device, ctx->queue, k, 1, &global, n_waits, waits, NULL);
    }
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(ctx->error, e, "skv_seq_quantize: enqueue");
    if (st == SKV_OK) { /* commit: the sequence changes only now */
        for (size_t i = 0; i < n_lh; i++) {
            if (!ql[i].count)
                continue;
            skvi_page_list *l = &s->lists[i * SKV_TIER_COUNT + SKV_TIER_F16];
            skvi_page_list *tl = &s->lists[i * SKV_TIER_COUNT + tier];
            for (uint32_t pj = 0; pj < ql[i].count; pj++)
                skvi_pool_unref(f16, l->ids[ql[i].first + pj]);
            memmove(l->ids + ql[i].first, l->ids + ql[i].first + ql[i].count,
                    (l->n - ql[i].first - ql[i].count) * sizeof *l->ids);
            l->n -= ql[i].count;
            l->tokens -= ql[i].count * P;
            if (ql[i].cow_old != ~0u) {
                tl->ids[tl->n - 1] = dest[ql[i].dest0];
                skvi_pool_unref(tp, ql[i].cow_old);
            }
            for (uint32_t f = 0; f < ql[i].fresh; f++)
                tl->ids[tl->n++] = dest[ql[i].dest0 + (ql[i].tail_fill ? 1 : 0) + f];
            tl->tokens += ql[i].count * P;
        }
    } else if (dest) { /* give back what was taken; the tier's own tail pages were not taken */
        for (size_t i = 0; i < n_lh; i++) {
            if (!ql[i].count || ql[i].dest0 >= taken)
                continue;
            uint32_t n = ql[i].fresh + (ql[i].tail_fill ? 1 : 0);
            for (uint32_t f = 0; f < n; f++)
                if (f > 0 || !ql[i].tail_fill || ql[i].cow_old != ~0u)
                    skvi_pool_unref(tp, dest[ql[i].dest0 + f]);
        }
    }
    skvi_free(a, owned);
    if (jobs_buf)
        clReleaseMemObject(jobs_buf);
    skvi_free(a, job);
    skvi_free(a, dest);
    skvi_free(a, ql);
    return st;
}
