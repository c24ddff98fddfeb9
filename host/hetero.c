/* HeteroCache on a sequence (DESIGN.md §7b): per-head budgets by category into RDR,
 * satellites' pages in the host tier, the decode hooks (drift checks and retrieval), stats. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"

skv_status skvi_hetero_kernels(skv_cache *c)
{
    skv_status st = c->k_topk ? SKV_OK : skvi_topk_kernel(c->ctx, &c->k_topk);
    if (st == SKV_OK && !c->k_topk_gather)
        st = skvi_kernel_create(c->ctx, "topk.cl", NULL, "topk_gather", &c->k_topk_gather);
    return st;
}

/* ---- HeteroCache on a sequence ---- */

void skvi_hetero_release(skv_cache *c, skvi_seq *s)
{
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    const skv_allocator *a = c->ctx->alloc;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        if (x->now_read && x->now_read[l]) {
            clWaitForEvents(1, &x->now_read[l]); /* it writes into x->now */
            clReleaseEvent(x->now_read[l]);
        }
        if (x->pos)
            skvi_free(a, x->pos[l]);
    }
    for (size_t i = 0; i < (size_t)c->desc.layers * c->desc.kv_heads; i++) {
        if (x->res)
            skvi_free(a, x->res[i]);
        if (x->pscore)
            skvi_free(a, x->pscore[i]);
    }
    if (x->piv_mem)
        clReleaseMemObject(x->piv_mem);
    void *arrays[] = {x->piv, x->n_piv, x->cat, x->pivot, x->stability, x->ref, x->ref_n, x->ref_w, x->now, x->now_n,
                      x->now_w,
                      x->now_read, x->steps, x->share, x->pos, x->pos_n, x->pos_cap, x->res, x->res_cap,
                      x->pscore, x->pscore_n};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        skvi_free(a, arrays[i]);
    skvi_free(a, x);
    s->hetero = NULL;
}

skv_status skv_seq_hetero(skv_cache *c, skv_seq_id seq, const skv_hetero_profile *p, const skv_hetero_desc *desc)
{
    static const char fn[] = "skv_seq_hetero";
    skvi_clear_error();
    if (!c || !p)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache or profile is NULL", fn);
    char *err = c->ctx->error;
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st == SKV_OK)
        st = skvi_hetero_check_desc(err, desc, fn);
    if (st != SKV_OK)
        return st;
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads;
    if (p->layers != L || p->heads != H)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: the profile is for %u layers x %u kv-heads, the cache has %u x %u",
                         fn, p->layers, p->heads, L, H);
    if (c->desc.retention != SKV_RETENTION_RDR)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: HeteroCache's budgets run through RDR: the cache has no retention",
                         fn);
    if (s->hetero)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: HeteroCache runs on sequence %u already", fn, seq);
    for (uint32_t l = 0; l < L; l++)
        if (s->len[l])
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: sequence %u holds tokens (HeteroCache starts empty)", fn,
                             seq);
    int satellites = 0;
    for (uint32_t l = 0; l < L; l++) {
        uint32_t whole = 0;
        for (uint32_t h = 0; h < H; h++) {
            const skv_head_category k = p->category[(size_t)l * H + h];
            whole += k == SKV_HEAD_PIVOT || k == SKV_HEAD_VOLATILE;
            satellites |= k == SKV_HEAD_SATELLITE;
        }
        if ((double)whole > (double)c->desc.budget_ratio * H)
            return skvi_fail(err, SKV_ERR_INVALID_ARG,
                             "%s: layer %u: %u of %u kv-heads keep their whole cache, more than budget_ratio %g allows",
                             fn, l, whole, H, (double)c->desc.budget_ratio);
    }
    if (satellites && c->budget[SKV_MEM_HOST] == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: the profile has satellites and the cache no host tier "
                                                   "(host_budget_bytes)", fn);
    skv_tier res_tier = SKV_TIER_F16; /* the satellites' resident copies: the most precise ADA tier */
    for (int t = SKV_TIER_COUNT - 1; t > SKV_TIER_F16; t--)
        if (c->desc.tiers & (1u << t))
            res_tier = (skv_tier)t;
    if (satellites && res_tier == SKV_TIER_F16)
        return skvi_fail(err, SKV_ERR_INVALID_ARG,
                         "%s: the profile has satellites and the cache no ADA tier (desc.tiers) for their resident "
                         "tokens", fn);
    st = skvi_hetero_kernels(c);
    if (st != SKV_OK)
        return st;
    const skv_allocator *a = c->ctx->alloc;
    const size_t n = (size_t)L * H, K = desc->top_k;
    skvi_hetero *x = skvi_calloc(a, 1, sizeof *x);
    if (x) {
        s->hetero = x;
        x->desc = *desc;
        x->k = desc->top_k;
        x->cat = skvi_calloc(a, n, sizeof *x->cat);
        x->pivot = skvi_calloc(a, n, sizeof *x->pivot);
        x->stability = skvi_calloc(a, n, sizeof *x->stability);
        x->ref = skvi_calloc(a, n * K, sizeof *x->ref);
        x->ref_n = skvi_calloc(a, n, sizeof *x->ref_n);
        x->ref_w = skvi_calloc(a, n * K, sizeof *x->ref_w);
        x->now_w = skvi_calloc(a, n * K, sizeof *x->now_w);
        x->now = skvi_calloc(a, n * K, sizeof *x->now);
        x->now_n = skvi_calloc(a, n, sizeof *x->now_n);
        x->now_read = skvi_calloc(a, L, sizeof *x->now_read);
        x->steps = skvi_calloc(a, L, sizeof *x->steps);
        x->share = skvi_calloc(a, n, sizeof *x->share);
        x->pos = skvi_calloc(a, L, sizeof *x->pos);
        x->pos_n = skvi_calloc(a, L, sizeof *x->pos_n);
        x->pos_cap = skvi_calloc(a, L, sizeof *x->pos_cap);
        x->res_tier = res_tier;
        x->res = skvi_calloc(a, n, sizeof *x->res);
        x->res_cap = skvi_calloc(a, n, sizeof *x->res_cap);
        x->piv = skvi_calloc(a, n, sizeof *x->piv);
        x->n_piv = skvi_calloc(a, L, sizeof *x->n_piv);
        x->pscore = skvi_calloc(a, n, sizeof *x->pscore);
        x->pscore_n = skvi_calloc(a, n, sizeof *x->pscore_n);
    }
    if (!x || !x->cat || !x->pivot || !x->stability || !x->ref || !x->ref_n || !x->ref_w || !x->now || !x->now_n ||
        !x->now_w || !x->now_read ||
        !x->steps || !x->share || !x->pos || !x->pos_n || !x->pos_cap || !x->res || !x->res_cap || !x->pscore || !x->pscore_n || !x->piv || !x->n_piv) {
        skvi_hetero_release(c, s);
        return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    memcpy(x->cat, p->category, n * sizeof *x->cat);
    memcpy(x->pivot, p->pivot, n * sizeof *x->pivot);
    memcpy(x->stability, p->stability, n * sizeof *x->stability);
    for (uint32_t l = 0; l < L; l++) /* the drift check's rows: each layer's pivots */
        for (uint32_t h = 0; h < H; h++)
            if (x->cat[(size_t)l * H + h] == SKV_HEAD_PIVOT)
                x->piv[(size_t)l * H + x->n_piv[l]++] = h;
    cl_int e;
    x->piv_mem = clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, n * sizeof *x->piv, x->piv, &e);
    if (e != CL_SUCCESS) {
        x->piv_mem = NULL;
        skvi_hetero_release(c, s);
        return skvi_cl_fail(err, e, "skv_seq_hetero: clCreateBuffer");
    }
    return SKV_OK;
}

skv_status skvi_hetero_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n)
{
    skvi_hetero *x = s->hetero;
    if (x && skvi_array_reserve(c->ctx->alloc, (void **)&x->pos[layer], &x->pos_cap[layer], x->pos_n[layer],
                                x->pos_n[layer] + n, sizeof *x->pos[layer], 1024) != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_append: out of memory");
    return SKV_OK;
}

void skvi_hetero_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n)
{
    (void)c;
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    memcpy(x->pos[layer] + x->pos_n[layer], positions, n * sizeof *positions);
    x->pos_n[layer] += n;
}

/* ---- budgets and placement ---- */

static skv_head_category category_of(const skvi_hetero *x, const skv_cache *c, uint32_t layer, uint32_t head)
{
    return x->cat[(size_t)layer * c->desc.kv_heads + head];
}

int skvi_hetero_rdr_head(const skvi_seq *s, const skv_cache *c, uint32_t layer, uint32_t head)
{
    return !s->hetero || category_of(s->hetero, c, layer, head) == SKV_HEAD_ANCHOR;
}

skv_status skvi_hetero_budgets(skv_cache *c, skvi_seq *s, uint32_t layer, uint64_t layer_tokens, uint64_t *per_head)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads;
    uint64_t *length = skvi_calloc(c->ctx->alloc, H, sizeof *length);
    if (!length)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    uint64_t whole = 0;
    for (uint32_t h = 0; h < H; h++) {
        length[h] = s->len[layer];
        const skv_head_category k = category_of(x, c, layer, h);
        whole += k == SKV_HEAD_PIVOT || k == SKV_HEAD_VOLATILE ? length[h] : 0;
    }
    /* pivots and volatile heads first; a budget below them (rounding, a pyramid's last
     * layers) leaves the others their floors (sinks and recent window) */
    skv_status st = skv_ref_hetero_budgets(H, x->cat + (size_t)layer * H, x->stability + (size_t)layer * H, length,
                                           layer_tokens > whole ? layer_tokens : whole, x->desc.eps, per_head);
    for (uint32_t h = 0; st == SKV_OK && h < H; h++)
        x->share[(size_t)layer * H + h] = per_head[h];
    skvi_free(c->ctx->alloc, length);
    return st == SKV_OK ? SKV_OK : skvi_fail(c->ctx->error, st, "skv_compress: %s", skv_last_error());
}

/* Index of `pos` in the layer's append order (-1: none). Positions usually ascend: a
 * binary search, else a scan. */
static int64_t index_of(const skvi_hetero *x, uint32_t layer, int32_t pos)
{
    const int32_t *p = x->pos[layer];
    size_t lo = 0, hi = x->pos_n[layer];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < x->pos_n[layer] && p[lo] == pos)
        return (int64_t)lo;
    for (size_t i = 0; i < x->pos_n[layer]; i++)
        if (p[i] == pos)
            return (int64_t)i;
    return -1;
}

/* Pages of a satellite's F16 list that never leave the device: those holding sinks, the
 * recent window and the tail (the page appends go to). */
static int protected_page(const skv_cache *c, const skvi_page_list *l, uint32_t j)
{
    const uint32_t P = c->desc.page_tokens;
    const uint64_t recent_first = l->tokens > c->desc.recent_window ? l->tokens - c->desc.recent_window : 0;
    return (uint64_t)j * P < c->desc.n_sink || (uint64_t)(j + 1) * P > recent_first || j + 1 == l->n;
}

typedef struct ranked {
    int in_set;   /* in the pivot's top-k */
    float w;      /* its weight there, else the pivot's score */
    uint32_t idx; /* in the F16 list (append order) */
} ranked;

static int by_rank(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->in_set != y->in_set)
        return y->in_set - x->in_set; /* the pivot's top-k first */
    if (x->w != y->w)
        return x->w < y->w ? 1 : -1;            /* heavier first */
    return (x->idx < y->idx) - (x->idx > y->idx); /* then newer */
}

/* The pivot's scores (the cache's scorer) over its tokens, which are every token in
 * append order (a pivot is never compressed): malloc'ed into *out (NULL and 0 without a
 * scorer: the satellites then rank by recency after the set). */
static skv_status pivot_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t pivot, float **out, uint32_t *n)
{
    *out = NULL, *n = 0;
    const skvi_page_list *l = skvi_seq_list(c, s, layer, pivot, SKV_TIER_F16);
    if (c->desc.scorer == SKV_SCORER_NONE || l->tokens == 0)
        return SKV_OK;
    float *sc = skvi_calloc(c->ctx->alloc, l->tokens, sizeof *sc);
    size_t count = 0;
    skv_status st = sc ? skvi_scores(c, (skv_seq_id)(s - c->seqs), layer, pivot, c->desc.scorer, sc, l->tokens, &count,
                                     NULL, NULL)
                       : skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
    if (st == SKV_OK && count != l->tokens)
        st = skvi_fail(c->ctx->error, SKV_ERR_INTERNAL, "HeteroCache: the pivot scored %zu of %u tokens", count,
                       l->tokens);
    if (st != SKV_OK) {
        skvi_free(c->ctx->alloc, sc);
        return st;
    }
    *out = sc, *n = (uint32_t)count;
    return SKV_OK;
}

/* The order in which a pivot's satellites hold resident tokens: the tokens outside the
 * protected pages of `l` (any satellite's F16 list: they all hold the same tokens in the
 * same order), the pivot's top-k (`set`, weights w) heaviest first, then the others by
 * the pivot's score (pscore over its first pn tokens; NULL: newest first). malloc'ed. */
static skv_status rank_tokens(skv_cache *c, const skvi_hetero *x, uint32_t layer, const skvi_page_list *l,
                              const uint32_t *set, const float *w, uint32_t set_n, const float *pscore, uint32_t pn,
                              ranked **out, uint32_t *n_out)
{
    const uint32_t P = c->desc.page_tokens;
    ranked *cand = skvi_calloc(c->ctx->alloc, (size_t)l->tokens + 1, sizeof *cand);
    *out = cand, *n_out = 0;
    if (!cand)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
    for (uint32_t idx = 0; idx < l->tokens; idx++)
        cand[idx] = (ranked){0, pscore && idx < pn ? pscore[idx] : 0.0f, idx};
    for (uint32_t i = 0; i < set_n; i++) {
        const int64_t idx = index_of(x, layer, (int32_t)set[i]);
        if (idx >= 0 && (uint64_t)idx < l->tokens)
            cand[idx].in_set = 1, cand[idx].w = w[i];
    }
    uint32_t n = 0;
    for (uint32_t idx = 0; idx < l->tokens; idx++)
        if (!protected_page(c, l, idx / P) && !isnan(cand[idx].w))
            cand[n++] = cand[idx];
    qsort(cand, n, sizeof *cand, by_rank);
    *n_out = n;
    return SKV_OK;
}

/* Enqueues ada_encode (encode: host F16 pages into the resident tier's device pages) or
 * slot_copy (within the resident tier's device pool) over n jobs of 4 uints, as one
 * launch: the jobs are padded to whole work-groups with copies of the last one (a job
 * writes one slot from one source, so a repeat writes the same bytes again). They write
 * slots in place, so a launch must run whole or not at all. */
static skv_status enqueue_jobs(skv_cache *c, skv_tier tier, int encode, const uint32_t *jobs, uint32_t n,
                               cl_uint n_waits, const cl_event *waits)
{
    const size_t padded = ((size_t)n + SKVI_ITEMS_WG - 1) / SKVI_ITEMS_WG * SKVI_ITEMS_WG;
    uint32_t *all = skvi_calloc(c->ctx->alloc, 4 * padded, sizeof *all);
    if (!all)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
    memcpy(all, jobs, (size_t)n * 16);
    for (size_t i = n; i < padded; i++)
        memcpy(all + 4 * i, jobs + 4 * ((size_t)n - 1), 16);
    cl_int e = CL_SUCCESS;
    cl_mem jb = clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, padded * 16, all, &e);
    skvi_free(c->ctx->alloc, all);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "HeteroCache: clCreateBuffer");
    cl_kernel k = encode ? c->k_encode[tier] : c->k_slot_copy[tier];
    skvi_args args = skvi_args_begin(k, 0);
    if (encode)
        skvi_pool_bind(&args, &c->pools[SKV_TIER_F16][SKV_MEM_HOST]);
    skvi_pool_bind(&args, &c->pools[tier][SKV_MEM_DEVICE]);
    skvi_arg_mem(&args, jb);
    if (encode) {
        skvi_arg_mem(&args, c->signs);
        skvi_arg_mem(&args, c->ada_params[tier]);
    }
    size_t global = padded; /* a multiple of the work-group skvi_enqueue_items takes: one launch */
    skv_status st = SKV_OK;
    e = skvi_args_end(&args);
    if (e != CL_SUCCESS)
        st = skvi_args_fail(c->ctx->error, &args, "HeteroCache: enqueue");
    else if ((e = skvi_enqueue_items(c->ctx->device, c->ctx->queue, k, 1, &global, n_waits, waits, NULL)) != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "HeteroCache: enqueue");
    clReleaseMemObject(jb);
    return st;
}

/* A satellite on the device (token-granular): its F16 list's protected pages (sinks,
 * recent window, tail) and, in the resident tier's list, copies of the tokens the
 * protected pages do not hold: its pivot's top-k (`set`, weights w) heaviest first, then
 * the rest by the pivot's score (pscore, over the pivot's tokens in append order, which
 * are the satellite's: NULL ranks by recency), as many as its share's bytes leave room
 * for. Every other F16 page is in host memory: the full KV stays there, and resident
 * copies are encoded from it. A token is never held twice: resident tokens are outside
 * the protected pages, and protection only moves on to newer tokens.
 * 1. The unprotected F16 pages go to the host (copies that wait for the work queued).
 * 2. The new resident set is ranked and cut to the room.
 * 3. The resident list changes in place, in queue order: tokens that stay keep their
 *    slots; those beyond the new length move into the slots of tokens that leave
 *    (slot_copy); new tokens are encoded from the host pages into the rest (ada_encode).
 *    So a retrieval costs the tokens that change, not the set.
 * A failure in step 1 or at the first enqueue changes nothing; if the moves then fail,
 * the slots meant for them keep their old tokens (still correct, held once) and the list
 * keeps its length. */
static skv_status place_satellite(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, const ranked *order,
                                  uint32_t n_order)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, P = c->desc.page_tokens, D = c->desc.head_dim;
    const size_t lh = (size_t)layer * H + head, base = lh * SKV_TIER_COUNT;
    const uint32_t li = (uint32_t)(base + SKV_TIER_F16);
    const skv_tier rt = x->res_tier;
    skvi_page_list *l = &s->lists[li], *rl = &s->lists[base + rt];
    if (l->n == 0)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    skvi_pool *rpool = &c->pools[rt][SKV_MEM_DEVICE];
    uint32_t *lists = skvi_calloc(a, l->n, sizeof *lists), *entries = skvi_calloc(a, l->n, sizeof *entries);
    const ranked *cand = order;
    uint8_t *mark = skvi_calloc(a, (size_t)l->tokens + 1, 1);
    uint32_t *targets = NULL, *enc = NULL, *mov = NULL, *msrc = NULL, *pages = NULL, *res = x->res[lh];
    uint32_t n_prot = 0, n_cand = n_order, taken = 0;
    cl_event *owned = NULL;
    skv_status st = SKV_OK;
    if (!lists || !entries || !mark) {
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
        goto done;
    }
    /* 1. the unprotected F16 pages to the host */
    uint32_t n = 0;
    for (uint32_t j = 0; j < l->n; j++) {
        const int prot = protected_page(c, l, j);
        n_prot += prot;
        if (!prot && !(l->ids[j] & SKVI_HOST_BIT))
            lists[n] = li, entries[n++] = j;
    }
    if (n) {
        st = skvi_stats_flush(c, s, layer); /* pending statistics read device pages: before they move */
        if (st == SKV_OK)
            st = skvi_move_entries(c, s, lists, entries, n, SKV_MEM_HOST, 0, NULL, "HeteroCache eviction");
        if (st != SKV_OK)
            goto done;
        c->hstats.pages_evicted += n;
    }
    /* 2. the resident set: the order, cut to the room */
    const double f16_token = (double)skvi_tier_page_bytes(SKV_TIER_F16, D, P) / P;
    const double room = (double)x->share[lh] * f16_token - (double)n_prot * f16_token * P;
    const uint64_t max_pages = room > 0 ? (uint64_t)(room / (double)rpool->page_bytes) : 0;
    if ((uint64_t)n_cand > max_pages * P)
        n_cand = (uint32_t)(max_pages * P);
    /* 3. the in-place change: 1 chosen, 2 resident, 3 both */
    const uint32_t r = rl->tokens, m = n_cand;
    for (uint32_t i = 0; i < m; i++)
        mark[cand[i].idx] |= 1;
    for (uint32_t j = 0; j < r; j++)
        mark[res[j]] |= 2;
    uint32_t n_t = 0, n_mov = 0, n_enc = 0;
    targets = skvi_calloc(a, (size_t)m + 1, sizeof *targets);
    enc = skvi_calloc(a, 4 * ((size_t)m + 1), sizeof *enc);
    mov = skvi_calloc(a, 4 * ((size_t)r + 1), sizeof *mov);
    msrc = skvi_calloc(a, (size_t)r + 1, sizeof *msrc);
    const uint32_t need_pages = (m + P - 1) / P, extra = need_pages > rl->n ? need_pages - rl->n : 0;
    pages = skvi_calloc(a, (size_t)extra + 1, sizeof *pages);
    if (!targets || !enc || !mov || !msrc || !pages || skvi_array_reserve(a, (void **)&x->res[lh], &x->res_cap[lh], r,
                                                                 m > r ? m : r, sizeof *res, 64) != 0) {
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
        goto done;
    }
    res = x->res[lh];
    for (uint32_t j = 0; j < m; j++) /* the slots below the new length to fill */
        if (j >= r || mark[res[j]] == 2)
            targets[n_t++] = j;
    if (n_t == 0 && m == r)
        goto done; /* the same tokens */
    if ((st = skvi_list_reserve(c, rl, extra)) != SKV_OK || (st = skvi_pool_reserve(c, rpool, extra)) != SKV_OK) {
        st = skvi_fail(c->ctx->error, st, "HeteroCache: %u resident pages: %s", extra, skv_context_last_error(c->ctx));
        goto done;
    }
    for (; taken < extra; taken++)
        pages[taken] = skvi_pool_take(rpool);
#define RES_PAGE(j) ((j) / P < rl->n ? rl->ids[(j) / P] & ~SKVI_HOST_BIT : pages[(j) / P - rl->n])
    for (uint32_t j = m; j < r; j++) /* tokens that stay, beyond the new length: moved down */
        if (mark[res[j]] == 3) {
            const uint32_t d = targets[n_mov];
            msrc[n_mov] = j;
            uint32_t *jb = mov + 4 * (size_t)n_mov++;
            jb[0] = RES_PAGE(j), jb[1] = j % P, jb[2] = RES_PAGE(d), jb[3] = d % P;
        }
    for (uint32_t i = 0; i < m; i++) /* new tokens: encoded from the host pages */
        if (mark[cand[i].idx] == 1) {
            const uint32_t idx = cand[i].idx, d = targets[n_mov + n_enc];
            uint32_t *jb = enc + 4 * (size_t)n_enc++; /* src page, src slot | dst slot << 16, dst page, layer * H + head */
            jb[0] = l->ids[idx / P] & ~SKVI_HOST_BIT, jb[1] = idx % P | (d % P) << 16, jb[2] = RES_PAGE(d);
            jb[3] = (uint32_t)lh;
        }
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    st = skvi_compute_waits(c, NULL, 0, 0, NULL, &n_waits, &waits, &owned); /* the eviction's copies */
    if (st == SKV_OK && n_enc)
        st = enqueue_jobs(c, rt, 1, enc, n_enc, n_waits, waits);
    if (st != SKV_OK)
        goto done;
    /* committed: the new tokens are in their slots, the new pages in the list */
    for (uint32_t k = 0; k < extra; k++)
        rl->ids[rl->n++] = pages[k];
    taken = 0;
    for (uint32_t i = 0, k = 0; i < m; i++)
        if (mark[cand[i].idx] == 1)
            res[targets[n_mov + k++]] = cand[i].idx;
    uint32_t len = m > r ? m : r;
    c->hstats.tokens_fetched += n_enc;
    c->hstats.bytes_moved += (uint64_t)n_enc * (uint64_t)f16_token;
    if (n_mov) {
        char saved[SKVI_ERROR_MAX];
        memcpy(saved, c->ctx->error, sizeof saved);
        if (enqueue_jobs(c, rt, 0, mov, n_mov, 0, NULL) == SKV_OK) {
            for (uint32_t k = 0; k < n_mov; k++) /* sources at or past m, targets below it */
                res[targets[k]] = res[msrc[k]];
            len = m;
        } else { /* the move targets keep their old tokens: correct, held once */
            memcpy(c->ctx->error, saved, sizeof saved);
            c->hstats.retrievals_failed++;
        }
    } else {
        len = m;
    }
    rl->tokens = len;
    const uint32_t keep_pages = (len + P - 1) / P;
    for (uint32_t k = keep_pages; k < rl->n; k++)
        skvi_pool_unref(rpool, rl->ids[k] & ~SKVI_HOST_BIT);
    if (rl->n > keep_pages)
        rl->n = keep_pages;
#undef RES_PAGE
done:
    for (uint32_t k = 0; k < taken; k++) /* pages taken for a change that was not made */
        skvi_pool_unref(rpool, pages[k]);
    skvi_free(a, owned);
    skvi_free(a, lists);
    skvi_free(a, entries);
    skvi_free(a, mark);
    skvi_free(a, targets);
    skvi_free(a, enc);
    skvi_free(a, mov);
    skvi_free(a, msrc);
    skvi_free(a, pages);
    return st;
}

skv_status skvi_hetero_place(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads;
    skv_status st = SKV_OK;
    for (uint32_t pv = 0; st == SKV_OK && pv < H; pv++) {
        if (category_of(x, c, layer, pv) != SKV_HEAD_PIVOT)
            continue;
        const size_t i = (size_t)layer * H + pv;
        float *sc;
        uint32_t n;
        st = pivot_scores(c, s, layer, pv, &sc, &n);
        if (st != SKV_OK)
            break;
        skvi_free(c->ctx->alloc, x->pscore[i]); /* kept for the drift checks until the next compression */
        x->pscore[i] = sc, x->pscore_n[i] = n;
        ranked *order = NULL;
        uint32_t n_order = 0;
        for (uint32_t h = 0; st == SKV_OK && h < H; h++)
            if (category_of(x, c, layer, h) == SKV_HEAD_SATELLITE && x->pivot[(size_t)layer * H + h] == pv) {
                if (!order)
                    st = rank_tokens(c, x, layer, skvi_seq_list(c, s, layer, h, SKV_TIER_F16), x->ref + i * x->k,
                                     x->ref_w + i * x->k, x->ref_n[i], sc, n, &order, &n_order);
                if (st == SKV_OK)
                    st = place_satellite(c, s, layer, h, order, n_order);
            }
        skvi_free(c->ctx->alloc, order);
    }
    return st;
}

/* ---- the decode hooks ---- */

/* Whether this step of (s, layer) checks the layer's pivots: the first, then every
 * check_steps-th, when the layer has a pivot. */
static int check_step(const skvi_hetero *x, uint32_t layer)
{
    return x->steps[layer] % x->desc.check_steps == 0 && x->n_piv[layer] > 0;
}

int skvi_hetero_wants_logits(const skvi_seq *s, uint32_t layer)
{
    return (s->calib && s->calib->steps[layer] < s->calib->desc.max_steps) ||
           (s->hetero && check_step(s->hetero, layer));
}

static void process_check(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, K = x->k;
    for (uint32_t r = 0; r < x->n_piv[layer]; r++) { /* row r: the layer's r-th pivot */
        const uint32_t h = x->piv[(size_t)layer * H + r];
        const size_t i = (size_t)layer * H + h, row = (size_t)layer * H + r;
        c->hstats.checks++;
        const uint32_t *now = x->now + row * K;
        const float *now_w = x->now_w + row * K;
        const uint32_t n = x->now_n[row];
        const int first = x->ref_n[i] == 0;
        const double overlap = first ? 1.0 : (double)skv_ref_set_overlap(now, n, x->ref + i * K, x->ref_n[i]) / (n ? n : 1);
        if (!first && overlap >= x->desc.tau_stable)
            continue;
        /* the first check places the satellites by the pivot's attention (until then by
         * its scores alone); later ones that find a drift retrieve, when retrieval is on */
        int failed = 0;
        if (!first)
            c->hstats.drifts++;
        /* the pivot's scores of the last compression (no wait here; the tokens since are
         * in the recent window), or scored now: before the first, and always with the
         * observed scorer, whose scores move with every decode step */
        char saved[SKVI_ERROR_MAX];
        memcpy(saved, c->ctx->error, sizeof saved);
        if ((first || x->desc.retrieval) && (!x->pscore[i] || c->desc.scorer == SKV_SCORER_OBSERVED)) {
            skvi_free(c->ctx->alloc, x->pscore[i]);
            x->pscore[i] = NULL, x->pscore_n[i] = 0;
        }
        if ((first || x->desc.retrieval) && !x->pscore[i] &&
            pivot_scores(c, s, layer, h, &x->pscore[i], &x->pscore_n[i]) != SKV_OK) {
            c->hstats.retrievals_failed++; /* nothing moved; the reference stays, so the next check retries */
            memcpy(c->ctx->error, saved, sizeof saved);
            continue;
        }
        const float *sc = x->pscore[i];
        const uint32_t sn = x->pscore_n[i];
        ranked *order = NULL;
        uint32_t n_order = 0;
        for (uint32_t g = 0; (first || x->desc.retrieval) && g < H; g++) {
            const size_t j = (size_t)layer * H + g;
            if (x->cat[j] != SKV_HEAD_SATELLITE || x->pivot[j] != h)
                continue;
            if ((order || rank_tokens(c, x, layer, skvi_seq_list(c, s, layer, g, SKV_TIER_F16), now, now_w, n, sc, sn,
                                      &order, &n_order) == SKV_OK) &&
                place_satellite(c, s, layer, g, order, n_order) == SKV_OK) {
                c->hstats.retrievals += !first;
            } else { /* the cache is as it was; decode goes on over the pages it has */
                c->hstats.retrievals_failed++;
                failed = 1;
                memcpy(c->ctx->error, saved, sizeof saved);
            }
        }
        skvi_free(c->ctx->alloc, order);
        if (!failed) { /* the reference resets; after a failure it stays, so the next check retries */
            memcpy(x->ref + i * K, now, n * sizeof *now);
            memcpy(x->ref_w + i * K, now_w, n * sizeof *x->now_w);
            x->ref_n[i] = n;
        }
    }
}

void skvi_hetero_before_decode(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    if (x->now_read[layer]) { /* the last check's sets: drift, retrieval */
        cl_int e = clWaitForEvents(1, &x->now_read[layer]);
        clReleaseEvent(x->now_read[layer]);
        x->now_read[layer] = NULL;
        if (e == CL_SUCCESS)
            process_check(c, s, layer);
    }
}

static cl_mem grow(skv_cache *c, cl_mem *buf, size_t *have, size_t need, cl_int *e)
{
    if (*buf && *have >= need)
        return *buf;
    size_t bytes = *have * 2 > need ? *have * 2 : need;
    cl_mem m = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, bytes, NULL, e);
    if (*e != CL_SUCCESS)
        return NULL;
    if (*buf)
        clReleaseMemObject(*buf); /* enqueued work keeps it alive */
    *buf = m;
    *have = bytes;
    return m;
}

/* This step's top-k sets of sequence b into c->h_sets / c->h_counts, a row per kv-head of
 * heads[head_off ..] (H rows). */
static skv_status step_topk(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe, void *arg,
                            uint32_t K, int weights, cl_mem heads, uint32_t head_off, uint32_t H)
{
    const uint64_t cap = (uint64_t)s->next_pos[layer];
    if (cap == 0 || cap > 0x7FFFFFFFull)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "HeteroCache: positions up to %lld", (long long)cap);
    const uint32_t k_eff = (uint64_t)K < s->len[layer] ? K : (uint32_t)s->len[layer];
    cl_int e = CL_SUCCESS;
    cl_mem rows = grow(c, &c->h_rows, &c->h_rows_bytes, (size_t)H * cap * sizeof(float), &e);
    cl_mem sets = e == CL_SUCCESS ? grow(c, &c->h_sets, &c->h_sets_bytes, (size_t)H * K * sizeof(cl_uint), &e) : NULL;
    if (e == CL_SUCCESS)
        grow(c, &c->h_counts, &c->h_counts_bytes, (size_t)H * sizeof(cl_uint), &e);
    const float zero = 0.0f;
    if (e == CL_SUCCESS)
        e = clEnqueueFillBuffer(c->ctx->queue, rows, &zero, sizeof zero, 0, (size_t)H * cap * sizeof(float), 0, NULL,
                                NULL);
    if (e == CL_SUCCESS)
        e = observe(arg, b, rows, (cl_uint)cap, heads, head_off, H);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "HeteroCache: attention rows");
    skv_status st =
        skvi_topk_enqueue(c->ctx, c->k_topk, rows, H, (uint32_t)cap, (uint32_t)cap, k_eff, sets, K, c->h_counts);
    if (st == SKV_OK && weights) {
        cl_mem wout = grow(c, &c->h_weights, &c->h_weights_bytes, (size_t)H * K * sizeof(float), &e);
        st = e == CL_SUCCESS ? skvi_topk_gather_enqueue(c->ctx, c->k_topk_gather, rows, H, (uint32_t)cap, sets, K,
                                                        c->h_counts, wout)
                             : skvi_cl_fail(c->ctx->error, e, "HeteroCache: clCreateBuffer");
    }
    return st;
}

skv_status skvi_hetero_after_decode(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe,
                                    void *arg)
{
    const uint32_t H = c->desc.kv_heads;
    skvi_calib *k = s->calib;
    skvi_hetero *x = s->hetero;
    skv_status st = SKV_OK;
    cl_int e = CL_SUCCESS;
    if (k && k->steps[layer] >= k->desc.max_steps)
        k->extra[layer]++;
    else if (k) {
        const uint32_t K = k->desc.top_k, t = k->steps[layer];
        st = step_topk(c, s, layer, b, observe, arg, K, 0, c->heads_all, 0, H);
        if (st == SKV_OK)
            e = clEnqueueCopyBuffer(c->ctx->queue, c->h_sets, k->sets[layer], 0, (size_t)t * H * K * sizeof(cl_uint),
                                    (size_t)H * K * sizeof(cl_uint), 0, NULL, NULL);
        if (st == SKV_OK && e == CL_SUCCESS)
            e = clEnqueueCopyBuffer(c->ctx->queue, c->h_counts, k->counts[layer], 0, (size_t)t * H * sizeof(cl_uint),
                                    (size_t)H * sizeof(cl_uint), 0, NULL, NULL);
        if (st == SKV_OK && e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "HeteroCache calibration: clEnqueueCopyBuffer");
        if (st == SKV_OK)
            k->steps[layer]++;
    }
    if (st == SKV_OK && x) {
        if (check_step(x, layer)) {
            const uint32_t K = x->k, R = x->n_piv[layer]; /* the pivots' rows only */
            st = step_topk(c, s, layer, b, observe, arg, K, 1, x->piv_mem, layer * H, R);
            if (st == SKV_OK) /* row r (the layer's r-th pivot) into x->now[layer][r] */
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_sets, CL_FALSE, 0, (size_t)R * K * sizeof(cl_uint),
                                        x->now + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_weights, CL_FALSE, 0, (size_t)R * K * sizeof(float),
                                        x->now_w + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_counts, CL_FALSE, 0, (size_t)R * sizeof(cl_uint),
                                        x->now_n + (size_t)layer * H, 0, NULL, &x->now_read[layer]);
            if (st == SKV_OK && e != CL_SUCCESS) {
                skvi_drain(c->ctx->queue); /* a read may have been enqueued into x->now */
                st = skvi_cl_fail(c->ctx->error, e, "HeteroCache: clEnqueueReadBuffer");
            }
            if (st == SKV_OK)
                clFlush(c->ctx->queue);
        }
        if (st == SKV_OK)
            x->steps[layer]++;
    }
    return st;
}

skv_status skv_cache_hetero_stats(const skv_cache *c, skv_hetero_stats *out)
{
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_hetero_stats: cache or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_cache_hetero_stats: out->struct_size is %zu, expected %zu", out->struct_size, sizeof *out);
    *out = c->hstats;
    out->struct_size = sizeof *out;
    out->device_bytes = out->host_bytes = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        out->device_bytes += c->pools[t][SKV_MEM_DEVICE].used * c->pools[t][SKV_MEM_DEVICE].page_bytes;
        out->host_bytes += c->pools[t][SKV_MEM_HOST].used * c->pools[t][SKV_MEM_HOST].page_bytes;
    }
    return SKV_OK;
}

skv_status skvi_hetero_cache_init(skv_cache *c)
{
    const uint32_t H = c->desc.kv_heads;
    cl_uint *ids = skvi_calloc(c->ctx->alloc, H, sizeof *ids);
    if (!ids)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_cache_create: out of memory");
    for (uint32_t h = 0; h < H; h++)
        ids[h] = h;
    cl_int e;
    c->heads_all = clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, H * sizeof *ids, ids, &e);
    skvi_free(c->ctx->alloc, ids);
    if (e != CL_SUCCESS) {
        c->heads_all = NULL;
        return skvi_cl_fail(c->ctx->error, e, "skv_cache_create: clCreateBuffer");
    }
    /* the kernels are built on first use; a build list names them now */
    return c->ctx->build_list ? skvi_hetero_kernels(c) : SKV_OK;
}

void skvi_hetero_cache_release(skv_cache *c)
{
    cl_mem hb[] = {c->h_rows, c->h_sets, c->h_counts, c->h_weights, c->heads_all};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++)
        if (hb[i])
            clReleaseMemObject(hb[i]);
    if (c->k_topk)
        clReleaseKernel(c->k_topk);
    if (c->k_topk_gather)
        clReleaseKernel(c->k_topk_gather);
}

void skvi_hetero_seq_release(skv_cache *c, skvi_seq *s)
{
    skvi_hetero_release(c, s);
    skvi_calib_release(c, s);
}
