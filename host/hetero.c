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
    for (size_t i = 0; i < x->n_fl; i++)
        clReleaseEvent(x->fl[i].done);
    void *arrays[] = {x->cat, x->pivot, x->stability, x->ref, x->ref_n, x->ref_w, x->now, x->now_n, x->now_w,
                      x->now_read, x->steps,
                      x->share, x->pos, x->pos_n, x->pos_cap, x->fl};
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
    }
    if (!x || !x->cat || !x->pivot || !x->stability || !x->ref || !x->ref_n || !x->ref_w || !x->now || !x->now_n ||
        !x->now_w || !x->now_read ||
        !x->steps || !x->share || !x->pos || !x->pos_n || !x->pos_cap) {
        skvi_hetero_release(c, s);
        return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    memcpy(x->cat, p->category, n * sizeof *x->cat);
    memcpy(x->pivot, p->pivot, n * sizeof *x->pivot);
    memcpy(x->stability, p->stability, n * sizeof *x->stability);
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

static int in_flight(const skvi_hetero *x, uint32_t list, uint32_t entry)
{
    for (size_t i = 0; i < x->n_fl; i++)
        if (x->fl[i].list == list && x->fl[i].entry == entry)
            return 1;
    return 0;
}

int skvi_hetero_entry_ready(skv_cache *c, skvi_seq *s, uint32_t list, uint32_t entry)
{
    (void)c;
    return !in_flight(s->hetero, list, entry);
}

/* Pages of a satellite's F16 list that never leave the device: those holding sinks, the
 * recent window and the tail (the page appends go to). */
static int protected_page(const skv_cache *c, const skvi_page_list *l, uint32_t j)
{
    const uint32_t P = c->desc.page_tokens;
    const uint64_t recent_first = l->tokens > c->desc.recent_window ? l->tokens - c->desc.recent_window : 0;
    return (uint64_t)j * P < c->desc.n_sink || (uint64_t)(j + 1) * P > recent_first || j + 1 == l->n;
}

/* Per page of the list, the attention weight of the set's positions it holds. */
static void page_mass(const skv_cache *c, const skvi_hetero *x, uint32_t layer, const uint32_t *set, const float *w,
                      uint32_t n, double *mass, uint32_t pages)
{
    memset(mass, 0, pages * sizeof *mass);
    for (uint32_t i = 0; i < n; i++) {
        int64_t idx = index_of(x, layer, (int32_t)set[i]);
        if (idx >= 0 && (uint64_t)idx / c->desc.page_tokens < pages)
            mass[idx / c->desc.page_tokens] += w[i] > 0.0f ? w[i] : 1e-30; /* held at all beats not held */
    }
}

/* Moves satellite `head`'s pages so that the device holds the protected pages, then
 * the pages holding the most attention of `set` (the pivot's top-k, weights w), within
 * its share; the rest go to the host. Fetches first (they arrive while decode goes on:
 * in flight until their copy completes), then evicts the lowest-ranked (least mass,
 * then the oldest). All or nothing per direction. */
static skv_status place_satellite(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, const uint32_t *set,
                                  const float *w, uint32_t set_n, int fetch)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, P = c->desc.page_tokens;
    const uint32_t li = (uint32_t)(((size_t)layer * H + head) * SKV_TIER_COUNT + SKV_TIER_F16);
    skvi_page_list *l = &s->lists[li];
    if (l->n == 0)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    double *hits = skvi_calloc(a, l->n, sizeof *hits);
    uint32_t *order = skvi_calloc(a, l->n, sizeof *order);
    uint32_t *lists = skvi_calloc(a, l->n, sizeof *lists), *entries = skvi_calloc(a, l->n, sizeof *entries);
    uint8_t *want = skvi_calloc(a, l->n, 1);
    skv_status st = SKV_OK;
    if (!hits || !order || !lists || !entries || !want) {
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
        goto done;
    }
    page_mass(c, x, layer, set, w, set_n, hits, l->n);
    /* the pages the device keeps: protected ones, then by hits (ties: newer first) */
    uint64_t share = x->share[(size_t)layer * H + head] / P, kept = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (protected_page(c, l, j)) {
            want[j] = 1;
            kept++;
        }
    uint32_t n_order = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (!want[j] && hits[j] > 0)
            order[n_order++] = j;
    for (uint32_t i = 1; i < n_order; i++) /* insertion sort: most mass, then newest */
        for (uint32_t m = i; m > 0; m--) {
            const uint32_t p = order[m - 1], q = order[m];
            if (hits[p] > hits[q] || (hits[p] == hits[q] && p > q))
                break;
            order[m - 1] = q, order[m] = p;
        }
    for (uint32_t i = 0; i < n_order && kept < share; i++, kept++)
        want[order[i]] = 1;
    /* pages already on the device and without hits stay while the share has room, the
     * newest first: nothing is moved for nothing */
    for (uint32_t j = l->n; j-- > 0 && kept < share;)
        if (!want[j] && !(l->ids[j] & SKVI_HOST_BIT)) {
            want[j] = 1;
            kept++;
        }
    uint32_t n = 0;
    if (fetch) {
        for (uint32_t j = 0; j < l->n; j++)
            if (want[j] && (l->ids[j] & SKVI_HOST_BIT))
                lists[n] = li, entries[n++] = j;
        if (n) {
            if (skvi_array_reserve(a, (void **)&x->fl, &x->cap_fl, x->n_fl, x->n_fl + n, sizeof *x->fl, 64) != 0) {
                st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
                goto done;
            }
            cl_event last = NULL;
            st = skvi_move_entries(c, s, lists, entries, n, SKV_MEM_DEVICE, 0, &last, "HeteroCache retrieval");
            if (st != SKV_OK)
                goto done;
            for (uint32_t i = 0; i < n; i++) {
                clRetainEvent(last);
                x->fl[x->n_fl++] = (skvi_inflight){lists[i], entries[i], last};
            }
            clReleaseEvent(last);
            c->hstats.pages_fetched += n;
        }
    }
    n = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (!want[j] && !(l->ids[j] & SKVI_HOST_BIT) && !in_flight(x, li, j))
            lists[n] = li, entries[n++] = j;
    if (n) {
        st = skvi_stats_flush(c, s, layer); /* pending statistics read device pages: before they move */
        if (st == SKV_OK)
            st = skvi_move_entries(c, s, lists, entries, n, SKV_MEM_HOST, 0, NULL, "HeteroCache eviction");
        if (st == SKV_OK)
            c->hstats.pages_evicted += n;
    }
done:
    skvi_free(a, hits);
    skvi_free(a, order);
    skvi_free(a, lists);
    skvi_free(a, entries);
    skvi_free(a, want);
    return st;
}

skv_status skvi_hetero_place(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads;
    skv_status st = SKV_OK;
    for (uint32_t h = 0; st == SKV_OK && h < H; h++) {
        if (category_of(x, c, layer, h) != SKV_HEAD_SATELLITE)
            continue;
        const size_t pv = (size_t)layer * H + x->pivot[(size_t)layer * H + h];
        st = place_satellite(c, s, layer, h, x->ref + pv * x->k, x->ref_w + pv * x->k, x->ref_n[pv], 0);
    }
    return st;
}

/* ---- the decode hooks ---- */

/* Whether this step of (s, layer) checks the layer's pivots: the first, then every
 * check_steps-th, when the layer has a pivot. */
static int check_step(const skv_cache *c, const skvi_hetero *x, uint32_t layer)
{
    if (x->steps[layer] % x->desc.check_steps != 0)
        return 0;
    for (uint32_t h = 0; h < c->desc.kv_heads; h++)
        if (category_of(x, c, layer, h) == SKV_HEAD_PIVOT)
            return 1;
    return 0;
}

int skvi_hetero_wants_logits(const skv_cache *c, const skvi_seq *s, uint32_t layer)
{
    return (s->calib && s->calib->steps[layer] < s->calib->desc.max_steps) ||
           (s->hetero && check_step(c, s->hetero, layer));
}

static void process_check(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, K = x->k;
    for (uint32_t h = 0; h < H; h++) {
        const size_t i = (size_t)layer * H + h;
        if (x->cat[i] != SKV_HEAD_PIVOT)
            continue;
        c->hstats.checks++;
        const uint32_t *now = x->now + i * K;
        const uint32_t n = x->now_n[i];
        const int first = x->ref_n[i] == 0;
        const double overlap = first ? 1.0 : (double)skv_ref_set_overlap(now, n, x->ref + i * K, x->ref_n[i]) / (n ? n : 1);
        if (!first && overlap >= x->desc.tau_stable)
            continue;
        /* the first check places the satellites by the pivot's attention (until then by
         * recency); later ones that find a drift retrieve, when retrieval is on */
        int failed = 0;
        if (!first)
            c->hstats.drifts++;
        for (uint32_t g = 0; (first || x->desc.retrieval) && g < H; g++) {
            const size_t j = (size_t)layer * H + g;
            if (x->cat[j] != SKV_HEAD_SATELLITE || x->pivot[j] != h)
                continue;
            char saved[SKVI_ERROR_MAX];
            memcpy(saved, c->ctx->error, sizeof saved);
            if (place_satellite(c, s, layer, g, now, x->now_w + i * K, n, 1) == SKV_OK) {
                c->hstats.retrievals += !first;
            } else { /* the cache is as it was; decode goes on over the pages it has */
                c->hstats.retrievals_failed++;
                failed = 1;
                memcpy(c->ctx->error, saved, sizeof saved);
            }
        }
        if (!failed) { /* the reference resets; after a failure it stays, so the next check retries */
            memcpy(x->ref + i * K, now, n * sizeof *now);
            memcpy(x->ref_w + i * K, x->now_w + i * K, n * sizeof *x->now_w);
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
    /* arrived pages become readable; the rest this step skips */
    const uint32_t per_layer = c->desc.kv_heads * SKV_TIER_COUNT;
    size_t kept = 0;
    for (size_t i = 0; i < x->n_fl; i++) {
        const cl_int status = x->fl[i].done ? skvi_event_status(x->fl[i].done) : CL_QUEUED;
        if (status == CL_COMPLETE) {
            clReleaseEvent(x->fl[i].done);
            continue;
        }
        if (status < 0 && x->fl[i].done) { /* a failed copy: the page is never read */
            clReleaseEvent(x->fl[i].done);
            x->fl[i].done = NULL;
        }
        c->hstats.pages_skipped += x->fl[i].list / per_layer == layer;
        x->fl[kept++] = x->fl[i];
    }
    x->n_fl = kept;
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

/* This step's top-k sets of sequence b (every kv-head) into c->h_sets / c->h_counts. */
static skv_status step_topk(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe, void *arg,
                            uint32_t K, int weights)
{
    const uint32_t H = c->desc.kv_heads;
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
        e = observe(arg, b, rows, (cl_uint)cap);
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
        st = step_topk(c, s, layer, b, observe, arg, K, 0);
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
        if (check_step(c, x, layer)) {
            const uint32_t K = x->k;
            st = step_topk(c, s, layer, b, observe, arg, K, 1);
            if (st == SKV_OK)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_sets, CL_FALSE, 0, (size_t)H * K * sizeof(cl_uint),
                                        x->now + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_weights, CL_FALSE, 0, (size_t)H * K * sizeof(float),
                                        x->now_w + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_counts, CL_FALSE, 0, (size_t)H * sizeof(cl_uint),
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
    /* the kernels are built on first use; a build list names them now */
    return c->ctx->build_list ? skvi_hetero_kernels(c) : SKV_OK;
}

void skvi_hetero_cache_release(skv_cache *c)
{
    cl_mem hb[] = {c->h_rows, c->h_sets, c->h_counts, c->h_weights};
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
