/* RDR's solver on the device (cl/rdr.cl): the searches of src/rdr.c (skv_rdr_search)
 * of many problems at once, each step one launch and one wait for all of them. */
#include <string.h>

#include "cache_internal.h"

/* The solver on the device for many problems at once (every (layer, kv-head) of a
 * compression): the candidates of all of them in shared buffers, problem i's from
 * first[i] (a multiple of the work-group size); each step of their searches
 * (skv_rdr_search) is one write of the lambdas, one rdr_choose launch over every
 * problem and one blocking read of the per-group counts, so a compression waits once
 * per step, not once per step of every problem. */
typedef struct many_solver {
    skv_cache *c;
    size_t n_probs, groups, total;
    uint32_t tiers; /* allowed tiers, codec errors and rates: the same for every problem */
    uint32_t *first, *n, *group_problem, *host_counts;
    float *lambdas;
    cl_mem u, energy, current, b_first, b_n, b_group, b_lambda, prm, choice, counts;
} many_solver;

static skv_status many_setup(many_solver *m, const skv_rdr_problem *const *probs)
{
    skv_cache *c = m->c;
    const skv_allocator *a = c->ctx->alloc;
    const size_t wg = c->rdr_wg, P = m->n_probs;
    m->first = skvi_calloc(a, P, sizeof *m->first);
    m->n = skvi_calloc(a, P, sizeof *m->n);
    m->lambdas = skvi_calloc(a, P, sizeof *m->lambdas);
    if (!m->first || !m->n || !m->lambdas)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
    m->tiers = probs[0]->tiers;
    for (size_t i = 0; i < P; i++) {
        if (probs[i]->tiers != m->tiers || memcmp(probs[i]->mse_k, probs[0]->mse_k, sizeof probs[0]->mse_k) ||
            memcmp(probs[i]->mse_v, probs[0]->mse_v, sizeof probs[0]->mse_v) ||
            memcmp(probs[i]->token_bytes, probs[0]->token_bytes, sizeof probs[0]->token_bytes))
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: problems with different tiers or rates");
        if (m->total + probs[i]->n + wg > 0xFFFFFFFFull)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "RDR solver: more than 2^32 candidates");
        m->first[i] = (uint32_t)m->total;
        m->n[i] = (uint32_t)probs[i]->n;
        size_t groups = (probs[i]->n + wg - 1) / wg;
        m->groups += groups;
        m->total += groups * wg;
    }
    const size_t N = m->total ? m->total : 1, G = m->groups ? m->groups : 1;
    float *u = skvi_calloc(a, N, sizeof *u), *en = skvi_calloc(a, N, sizeof *en);
    uint8_t *cur = skvi_calloc(a, N, 1);
    m->group_problem = skvi_calloc(a, G, sizeof *m->group_problem);
    m->host_counts = skvi_calloc(a, G * 5, sizeof *m->host_counts);
    skv_status st = SKV_OK;
    if (!u || !en || !cur || !m->group_problem || !m->host_counts)
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
    for (size_t i = 0, g = 0; st == SKV_OK && i < P; i++) {
        for (uint64_t k = 0; k < probs[i]->n; k++) {
            u[m->first[i] + k] = probs[i]->items[k].u;
            en[m->first[i] + k] = probs[i]->items[k].key_energy;
            cur[m->first[i] + k] = probs[i]->items[k].current;
        }
        for (size_t k = 0; k < (probs[i]->n + wg - 1) / wg; k++)
            m->group_problem[g++] = (uint32_t)i;
    }
    float prm[12]; /* the cache's codec errors and rates: the same for every problem */
    for (int t = 0; st == SKV_OK && t < 4; t++) {
        prm[t] = (float)probs[0]->mse_k[t];
        prm[4 + t] = (float)probs[0]->mse_v[t];
        prm[8 + t] = (float)probs[0]->token_bytes[t];
    }
    cl_int e = CL_SUCCESS;
    const cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
    struct {
        cl_mem *mem;
        cl_mem_flags flags;
        size_t bytes;
        void *src;
    } bufs[] = {
        {&m->u, ro, N * 4, u},
        {&m->energy, ro, N * 4, en},
        {&m->current, ro, N, cur},
        {&m->b_first, ro, P * 4, m->first},
        {&m->b_n, ro, P * 4, m->n},
        {&m->b_group, ro, G * 4, m->group_problem},
        {&m->b_lambda, CL_MEM_READ_ONLY, P * 4, NULL},
        {&m->prm, ro, sizeof prm, prm},
        {&m->choice, CL_MEM_READ_WRITE, N, NULL},
        {&m->counts, CL_MEM_READ_WRITE, G * 5 * 4, NULL},
    };
    for (size_t i = 0; st == SKV_OK && e == CL_SUCCESS && i < sizeof bufs / sizeof bufs[0]; i++)
        *bufs[i].mem = clCreateBuffer(c->ctx->cl, bufs[i].flags, bufs[i].bytes, bufs[i].src, &e);
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "RDR solver: clCreateBuffer");
    skvi_free(a, u);
    skvi_free(a, en);
    skvi_free(a, cur);
    return st;
}

static void many_release(many_solver *m)
{
    const skv_allocator *a = m->c->ctx->alloc;
    cl_mem bufs[] = {m->u, m->energy, m->current, m->b_first, m->b_n, m->b_group, m->b_lambda, m->prm, m->choice,
                     m->counts};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    skvi_free(a, m->first);
    skvi_free(a, m->n);
    skvi_free(a, m->lambdas);
    skvi_free(a, m->group_problem);
    skvi_free(a, m->host_counts);
}

/* One step: every problem with a request (lambda >= 0) chooses; the choices of those
 * that want them are read into choices[i]; counts[i] are summed over i's groups. */
static skv_status many_step(many_solver *m, const skv_rdr_search *s, uint8_t *const *choices, uint64_t *counts)
{
    skv_cache *c = m->c;
    cl_command_queue q = c->rq;
    const size_t P = m->n_probs;
    for (size_t i = 0; i < P; i++)
        m->lambdas[i] = s[i].state == SKV_RDR_SEARCH_DONE ? -1.0f : s[i].lambda;
    cl_int e = clEnqueueWriteBuffer(q, m->b_lambda, CL_FALSE, 0, P * 4, m->lambdas, 0, NULL, NULL);
    skvi_args k = skvi_args_begin(c->k_rdr_choose, 0);
    skvi_arg_mem(&k, m->u);
    skvi_arg_mem(&k, m->energy);
    skvi_arg_mem(&k, m->current);
    skvi_arg_mem(&k, m->b_first);
    skvi_arg_mem(&k, m->b_n);
    skvi_arg_mem(&k, m->b_group);
    skvi_arg_mem(&k, m->b_lambda);
    skvi_arg_mem(&k, m->prm);
    skvi_arg_u32(&k, m->tiers);
    skvi_arg_mem(&k, m->choice);
    skvi_arg_mem(&k, m->counts);
    cl_int ek = skvi_args_end(&k);
    if (ek != CL_SUCCESS)
        return skvi_args_fail(c->ctx->error, &k, "RDR solver: rdr_choose");
    size_t global = m->groups * c->rdr_wg, local = c->rdr_wg;
    if (e == CL_SUCCESS && global)
        e = clEnqueueNDRangeKernel(q, k.k, 1, NULL, &global, &local, 0, NULL, NULL);
    for (size_t i = 0; e == CL_SUCCESS && i < P; i++)
        if (s[i].state != SKV_RDR_SEARCH_DONE && s[i].want_choice && m->n[i])
            e = clEnqueueReadBuffer(q, m->choice, CL_FALSE, m->first[i], m->n[i], choices[i], 0, NULL, NULL);
    if (e == CL_SUCCESS && m->groups) /* the one wait of the step; the reads above come first */
        e = clEnqueueReadBuffer(q, m->counts, CL_TRUE, 0, m->groups * 5 * 4, m->host_counts, 0, NULL, NULL);
    if (e != CL_SUCCESS) {
        clFinish(q); /* no read still writes into the caller's arrays */
        return skvi_cl_fail(c->ctx->error, e, "RDR solver: step");
    }
    memset(counts, 0, P * (SKV_TIER_COUNT + 1) * sizeof *counts);
    for (size_t g = 0; g < m->groups; g++)
        for (int o = 0; o < 5; o++)
            counts[(size_t)m->group_problem[g] * (SKV_TIER_COUNT + 1) + o] += m->host_counts[g * 5 + o];
    c->rdr_waits++;
    c->compress_waits++;
    return SKV_OK;
}

skv_status skvi_rdr_solve_many(skv_cache *c, const skv_rdr_problem *const *probs, uint8_t *const *choices, int *rcs,
                               size_t n_probs)
{
    if (n_probs == 0)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    many_solver m = {.c = c, .n_probs = n_probs};
    skv_rdr_search *s = skvi_calloc(a, n_probs, sizeof *s);
    uint64_t *counts = skvi_calloc(a, n_probs * (SKV_TIER_COUNT + 1), sizeof *counts);
    skv_status st = s && counts ? many_setup(&m, probs)
                                : skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
    for (size_t i = 0; st == SKV_OK && i < n_probs; i++)
        skv_rdr_search_begin(&s[i], probs[i]);
    for (size_t busy = n_probs; st == SKV_OK && busy > 0;) {
        st = many_step(&m, s, choices, counts);
        busy = 0;
        for (size_t i = 0; st == SKV_OK && i < n_probs; i++) {
            if (s[i].state == SKV_RDR_SEARCH_DONE)
                continue;
            if (skv_rdr_search_step(&s[i], probs[i], counts + i * (SKV_TIER_COUNT + 1), choices[i]))
                busy++;
            else if ((rcs[i] = s[i].rc) == -2)
                st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "RDR solver: out of memory");
        }
    }
    many_release(&m);
    skvi_free(a, s);
    skvi_free(a, counts);
    return st;
}

skv_status skvi_rdr_solve_device(skv_cache *c, const skv_rdr_problem *p, uint8_t *choice, int *rc)
{
    return skvi_rdr_solve_many(c, &p, &choice, rc, 1);
}
