/* RDR's solver on the device (cl/rdr.cl rdr_search): the searches of src/rdr.c
 * (skv_rdr_search) of many problems in one launch, one work-group each, then one wait
 * for their choices; the host finishes those that need it (skv_rdr_finish). */
#include <string.h>

#include "cache_internal.h"

skv_status skvi_rdr_solve_many(skv_cache *c, const skv_rdr_problem *const *probs, uint8_t *const *choices, int *rcs,
                               size_t n_probs)
{
    if (n_probs == 0)
        return SKV_OK;
    skv_context *ctx = c->ctx;
    const skv_allocator *a = ctx->alloc;
    const size_t P = n_probs;
    for (size_t i = 0; i < P; i++)
        if (probs[i]->tiers != probs[0]->tiers || probs[i]->page_tokens != probs[0]->page_tokens ||
            memcmp(probs[i]->mse_k, probs[0]->mse_k, sizeof probs[0]->mse_k) ||
            memcmp(probs[i]->mse_v, probs[0]->mse_v, sizeof probs[0]->mse_v) ||
            memcmp(probs[i]->token_bytes, probs[0]->token_bytes, sizeof probs[0]->token_bytes) ||
            memcmp(probs[i]->page_bytes, probs[0]->page_bytes, sizeof probs[0]->page_bytes))
            return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: problems with different tiers or rates");
    uint64_t total = 0;
    for (size_t i = 0; i < P; i++)
        total += probs[i]->n;
    if (total > 0xFFFFFFFFull)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: more than 2^32 candidates");
    const size_t N = total ? (size_t)total : 1;
    uint32_t *first = skvi_calloc(a, P, sizeof *first), *n = skvi_calloc(a, P, sizeof *n);
    uint32_t *fixed = skvi_calloc(a, P * 4, sizeof *fixed);
    uint64_t *budget = skvi_calloc(a, P, sizeof *budget);
    int *code = skvi_calloc(a, P, sizeof *code);
    float *u = skvi_calloc(a, N, sizeof *u), *en = skvi_calloc(a, N, sizeof *en);
    uint8_t *cur = skvi_calloc(a, N, 1);
    skv_status st = SKV_OK;
    if (!first || !n || !fixed || !budget || !code || !u || !en || !cur)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
    for (size_t i = 0, at = 0; st == SKV_OK && i < P; i++) {
        const skv_rdr_problem *p = probs[i];
        first[i] = (uint32_t)at;
        n[i] = (uint32_t)p->n;
        budget[i] = p->budget;
        for (int t = 0; t < 4; t++) {
            if (p->fixed[t] > 0xFFFFFFFFull)
                st = skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: more than 2^32 protected tokens");
            fixed[i * 4 + t] = (uint32_t)p->fixed[t];
        }
        for (uint64_t k = 0; k < p->n; k++, at++) {
            u[at] = p->items[k].u;
            en[at] = p->items[k].key_energy;
            cur[at] = p->items[k].current;
        }
    }
    float prm[12]; /* the codec errors and rates: the same for every problem */
    uint32_t pbytes[4];
    for (int t = 0; t < 4; t++) {
        prm[t] = (float)probs[0]->mse_k[t];
        prm[4 + t] = (float)probs[0]->mse_v[t];
        prm[8 + t] = (float)probs[0]->token_bytes[t];
        if (probs[0]->page_bytes[t] > 0xFFFFFFFFull && st == SKV_OK)
            st = skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: pages over 4 GiB");
        pbytes[t] = (uint32_t)probs[0]->page_bytes[t];
    }
    cl_mem bufs[10] = {0};
    cl_int e = CL_SUCCESS;
    const cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
    const struct {
        cl_mem_flags flags;
        size_t bytes;
        void *src;
    } spec[10] = {
        {ro, N * 4, u},         {ro, N * 4, en},         {ro, N, cur},
        {ro, P * 4, first},     {ro, P * 4, n},          {ro, P * 8, budget},
        {ro, P * 16, fixed},    {ro, sizeof prm, prm},   {ro, sizeof pbytes, pbytes},
        {CL_MEM_READ_WRITE, N, NULL},
    };
    for (int i = 0; st == SKV_OK && e == CL_SUCCESS && i < 10; i++)
        bufs[i] = clCreateBuffer(ctx->cl, spec[i].flags, spec[i].bytes, spec[i].src, &e);
    cl_mem codes = NULL;
    if (st == SKV_OK && e == CL_SUCCESS)
        codes = clCreateBuffer(ctx->cl, CL_MEM_WRITE_ONLY, P * sizeof *code, NULL, &e);
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(ctx->error, e, "RDR solver: clCreateBuffer");
    if (st == SKV_OK) {
        skvi_args k = skvi_args_begin(c->k_rdr_search, 0);
        for (int i = 0; i < 9; i++)
            skvi_arg_mem(&k, bufs[i]);
        skvi_arg_u32(&k, (cl_uint)probs[0]->page_tokens);
        skvi_arg_u32(&k, probs[0]->tiers);
        skvi_arg_mem(&k, bufs[9]);
        skvi_arg_mem(&k, codes);
        e = skvi_args_end(&k);
        if (e != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &k, "RDR solver: rdr_search");
    }
    size_t global = P * c->rdr_wg, local = c->rdr_wg;
    if (st == SKV_OK)
        e = clEnqueueNDRangeKernel(c->rq, c->k_rdr_search, 1, NULL, &global, &local, 0, NULL, NULL);
    for (size_t i = 0; st == SKV_OK && e == CL_SUCCESS && i < P; i++)
        if (n[i])
            e = clEnqueueReadBuffer(c->rq, bufs[9], CL_FALSE, first[i], n[i], choices[i], 0, NULL, NULL);
    if (st == SKV_OK && e == CL_SUCCESS) /* the one wait; the reads above come first */
        e = clEnqueueReadBuffer(c->rq, codes, CL_TRUE, 0, P * sizeof *code, code, 0, NULL, NULL);
    if (st == SKV_OK && e != CL_SUCCESS) {
        skvi_drain(c->rq); /* no read still writes into the caller's arrays */
        st = skvi_cl_fail(ctx->error, e, "RDR solver: rdr_search");
    }
    if (st == SKV_OK) {
        c->rdr_waits++;
        c->compress_waits++;
    }
    for (size_t i = 0; st == SKV_OK && i < P; i++) { /* the host's exact finish */
        rcs[i] = code[i] == 1 ? skv_rdr_finish(probs[i], choices[i]) : code[i];
        if (rcs[i] == -2)
            st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
    }
    for (int i = 0; i < 10; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    if (codes)
        clReleaseMemObject(codes);
    skvi_free(a, first);
    skvi_free(a, n);
    skvi_free(a, fixed);
    skvi_free(a, budget);
    skvi_free(a, code);
    skvi_free(a, u);
    skvi_free(a, en);
    skvi_free(a, cur);
    return st;
}

skv_status skvi_rdr_solve_device(skv_cache *c, const skv_rdr_problem *p, uint8_t *choice, int *rc)
{
    return skvi_rdr_solve_many(c, &p, &choice, rc, 1);
}
