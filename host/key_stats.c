/* The running key statistics of each (sequence, layer, kv-head), for the scorers that
 * compare keys with them (KeyDiff, ManifoldKV, TriAttention's window means): sums over
 * every key appended, kept in double on the host. New tokens are added lazily (their
 * keys are still the tail of the F16 lists until something moves them, and everything
 * that moves pages flushes first), so an append never waits for the device. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cache_internal.h"

int skvi_scorer_has_stats(const skv_cache *c)
{
    return c->desc.scorer == SKV_SCORER_KEYDIFF || c->desc.scorer == SKV_SCORER_MANIFOLD ||
           c->desc.scorer == SKV_SCORER_MANIFOLD_WINDOWED;
}

static size_t n_lh(const skv_cache *c) { return (size_t)c->desc.layers * c->desc.kv_heads; }

skv_status skvi_stats_alloc(skv_cache *c, skvi_seq *s)
{
    if (!skvi_scorer_has_stats(c))
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    s->stats = skvi_calloc(a, n_lh(c), sizeof *s->stats);
    s->pending_pos = skvi_calloc(a, c->desc.layers, sizeof *s->pending_pos);
    s->pending_n = skvi_calloc(a, c->desc.layers, sizeof *s->pending_n);
    s->pending_cap = skvi_calloc(a, c->desc.layers, sizeof *s->pending_cap);
    if (!s->stats || !s->pending_pos || !s->pending_n || !s->pending_cap)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "sequence statistics: out of memory");
    return SKV_OK;
}

void skvi_stats_release(skv_cache *c, skvi_seq *s)
{
    const skv_allocator *a = c->ctx->alloc;
    for (size_t i = 0; s->stats && i < n_lh(c); i++) {
        skvi_free(a, s->stats[i].sum);
        skvi_free(a, s->stats[i].sum_unit);
        skvi_free(a, s->stats[i].count);
        skvi_free(a, s->stats[i].win);
    }
    for (uint32_t l = 0; s->pending_pos && l < c->desc.layers; l++)
        skvi_free(a, s->pending_pos[l]);
    skvi_free(a, s->stats);
    skvi_free(a, s->pending_pos);
    skvi_free(a, s->pending_n);
    skvi_free(a, s->pending_cap);
    s->stats = NULL;
    s->pending_pos = NULL;
    s->pending_n = s->pending_cap = NULL;
}

/* The row of window w in k (k->n_windows if it has none). */
static uint32_t row_of(const skvi_key_stats *k, uint32_t w)
{
    uint32_t lo = 0, hi = k->n_windows;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (k->win[mid] < w)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < k->n_windows && k->win[lo] == w ? lo : k->n_windows;
}

/* Gives (layer, head) a zero row for each of the n windows in w (ascending, distinct)
 * that it lacks; nothing changes on failure. */
static skv_status stats_add_windows(skv_cache *c, skvi_key_stats *k, const uint32_t *w, uint32_t n)
{
    uint32_t fresh = 0;
    for (uint32_t i = 0; i < n; i++)
        fresh += row_of(k, w[i]) == k->n_windows;
    if (!fresh)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    const uint32_t D = c->desc.head_dim, total = k->n_windows + fresh;
    double *sum = skvi_calloc(a, (size_t)total * D, sizeof *sum), *unit = skvi_calloc(a, (size_t)total * D, sizeof *unit);
    uint64_t *count = skvi_calloc(a, total, sizeof *count);
    uint32_t *win = skvi_calloc(a, total, sizeof *win);
    if (!sum || !unit || !count || !win) {
        skvi_free(a, sum);
        skvi_free(a, unit);
        skvi_free(a, count);
        skvi_free(a, win);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    }
    /* merge the two ascending lists; the old rows keep their sums */
    for (uint32_t i = 0, j = 0, r = 0; r < total; r++) {
        if (i < k->n_windows && (j >= n || k->win[i] <= w[j])) {
            if (j < n && k->win[i] == w[j])
                j++;
            win[r] = k->win[i];
            count[r] = k->count[i];
            memcpy(sum + (size_t)r * D, k->sum + (size_t)i * D, D * sizeof *sum);
            memcpy(unit + (size_t)r * D, k->sum_unit + (size_t)i * D, D * sizeof *unit);
            i++;
        } else {
            win[r] = w[j++];
        }
    }
    skvi_free(a, k->sum);
    skvi_free(a, k->sum_unit);
    skvi_free(a, k->count);
    skvi_free(a, k->win);
    k->sum = sum;
    k->sum_unit = unit;
    k->count = count;
    k->win = win;
    k->n_windows = total;
    return SKV_OK;
}

skv_status skvi_stats_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src)
{
    if (!src->stats)
        return SKV_OK;
    const uint32_t D = c->desc.head_dim;
    for (size_t i = 0; i < n_lh(c); i++) {
        const skvi_key_stats *from = &src->stats[i];
        skvi_key_stats *to = &dst->stats[i];
        skv_status st = stats_add_windows(c, to, from->win, from->n_windows);
        if (st != SKV_OK)
            return st;
        if (to->n_windows) { /* a fresh sequence: the same rows */
            memcpy(to->sum, from->sum, (size_t)from->n_windows * D * sizeof(double));
            memcpy(to->sum_unit, from->sum_unit, (size_t)from->n_windows * D * sizeof(double));
            memcpy(to->count, from->count, from->n_windows * sizeof(uint64_t));
        }
    }
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        skv_status st = skvi_stats_reserve(c, dst, l, src->pending_n[l]);
        if (st != SKV_OK)
            return st;
        if (src->pending_n[l])
            memcpy(dst->pending_pos[l], src->pending_pos[l], src->pending_n[l] * sizeof(int32_t));
        dst->pending_n[l] = src->pending_n[l];
    }
    return SKV_OK;
}

skv_status skvi_stats_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n)
{
    if (!s->stats || s->pending_n[layer] + n <= s->pending_cap[layer])
        return SKV_OK;
    uint32_t cap = s->pending_cap[layer] ? s->pending_cap[layer] : 256;
    while (cap < s->pending_n[layer] + n)
        cap *= 2;
    int32_t *p = skvi_calloc(c->ctx->alloc, cap, sizeof *p);
    if (!p)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    if (s->pending_n[layer])
        memcpy(p, s->pending_pos[layer], s->pending_n[layer] * sizeof *p);
    skvi_free(c->ctx->alloc, s->pending_pos[layer]);
    s->pending_pos[layer] = p;
    s->pending_cap[layer] = cap;
    return SKV_OK;
}

void skvi_stats_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n)
{
    (void)c;
    if (!s->stats)
        return;
    memcpy(s->pending_pos[layer] + s->pending_n[layer], positions, n * sizeof *positions);
    s->pending_n[layer] += n;
}

static int cmp_u32(const void *a, const void *b)
{
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint32_t window_of(const skv_cache *c, int32_t position)
{
    if (c->desc.scorer != SKV_SCORER_MANIFOLD_WINDOWED || position < 0)
        return 0;
    return (uint32_t)position / c->desc.score_window;
}

/* One layer's flush: its pending tokens' key sums (per head and window) read into out. */
typedef struct flush_job {
    uint32_t layer, m, nw;
    uint32_t *win;   /* [m]: each token's index in uw */
    uint32_t *uw;  /* [nw]: the distinct windows of the tokens, ascending */
    uint32_t *row; /* [nw]: scratch, their rows in one head's statistics */
    float *out;    /* [H][nw][2][D] */
} flush_job;

/* The arguments key_inv_norms and key_stats begin with: the F16 pool, the pending
 * tokens' pages (bufs[0], pph per head) and counts (bufs[1]), m, and the inverse norms
 * (bufs[3]). */
static void bind_pending(skvi_args *a, const skvi_pool *pool, const cl_mem *bufs, uint32_t pph, uint32_t m)
{
    skvi_pool_bind(a, pool);
    skvi_arg_mem(a, bufs[0]);
    skvi_arg_u32(a, pph);
    skvi_arg_mem(a, bufs[1]);
    skvi_arg_u32(a, m);
    skvi_arg_mem(a, bufs[3]);
}

/* Enqueues one layer's flush, its read left in flight into job->out. */
static skv_status flush_enqueue(skv_cache *c, skvi_seq *s, uint32_t layer, flush_job *job)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim, P = c->desc.page_tokens, m = s->pending_n[layer];
    const skv_allocator *a = c->ctx->alloc;
    skv_context *ctx = c->ctx;
    /* the distinct windows of the new tokens, and each token's index among them */
    uint32_t *win = skvi_calloc(a, m, sizeof *win), *uw = skvi_calloc(a, m, sizeof *uw);
    uint32_t *row = skvi_calloc(a, m, sizeof *row);
    *job = (flush_job){layer, m, 0, win, uw, row, NULL}; /* flush frees them */
    if (!win || !uw || !row)
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    for (uint32_t t = 0; t < m; t++)
        uw[t] = window_of(c, s->pending_pos[layer][t]);
    qsort(uw, m, sizeof *uw, cmp_u32);
    uint32_t nw = 0;
    for (uint32_t t = 0; t < m; t++)
        if (!nw || uw[t] != uw[nw - 1])
            uw[nw++] = uw[t];
    skvi_key_stats distinct = {.win = uw, .n_windows = nw};
    for (uint32_t t = 0; t < m; t++)
        win[t] = row_of(&distinct, window_of(c, s->pending_pos[layer][t]));
    job->nw = nw;
    for (uint32_t h = 0; h < H; h++) {
        skv_status st = stats_add_windows(c, &s->stats[(size_t)layer * H + h], uw, nw);
        if (st != SKV_OK)
            return st;
    }
    uint32_t pph = 0;
    for (uint32_t h = 0; h < H; h++) {
        const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
        if (l->tokens < m)
            return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "key statistics: pending tokens left the F16 list");
        pph = l->n > pph ? l->n : pph;
    }
    uint32_t *pages = skvi_calloc(a, (size_t)H * pph, sizeof *pages), *tokens = skvi_calloc(a, H, sizeof *tokens);
    float *out = job->out = skvi_calloc(a, (size_t)H * nw * 2 * D, sizeof *out);
    skv_status st = SKV_OK;
    cl_mem bufs[5] = {0};
    if (!pages || !tokens || !out)
        st = skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    cl_int e = CL_SUCCESS;
    if (st == SKV_OK) {
        for (uint32_t h = 0; h < H; h++) {
            const skvi_page_list *l = skvi_seq_list(c, s, layer, h, SKV_TIER_F16);
            for (uint32_t j = 0; j < l->n; j++)
                pages[(size_t)h * pph + j] = l->ids[j]; /* device pages: offload and quantize flush first */
            tokens[h] = l->tokens;
        }
        cl_mem_flags ro = CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR;
        bufs[0] = clCreateBuffer(ctx->cl, ro, (size_t)H * pph * 4, pages, &e);
        if (e == CL_SUCCESS)
            bufs[1] = clCreateBuffer(ctx->cl, ro, (size_t)H * 4, tokens, &e);
        if (e == CL_SUCCESS)
            bufs[2] = clCreateBuffer(ctx->cl, ro, (size_t)m * 4, win, &e);
        if (e == CL_SUCCESS)
            bufs[3] = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * m * 4, NULL, &e);
        if (e == CL_SUCCESS)
            bufs[4] = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, (size_t)H * nw * 2 * D * 4, NULL, &e);
        skvi_pool *pool = &c->pools[SKV_TIER_F16][SKV_MEM_DEVICE];
        skvi_args args = skvi_args_begin(c->k_inv_norms, 0);
        if (e == CL_SUCCESS) {
            cl_kernel k = c->k_inv_norms;
            bind_pending(&args, pool, bufs, pph, m);
            size_t g[2] = {m, H};
            e = skvi_args_end(&args);
            if (e == CL_SUCCESS)
                e = skvi_enqueue_items(c->ctx->device, c->rq, k, 2, g, 0, NULL, NULL);
        }
        if (e == CL_SUCCESS) {
            cl_kernel k = c->k_key_stats;
            args = skvi_args_begin(k, 0);
            bind_pending(&args, pool, bufs, pph, m);
            skvi_arg_mem(&args, bufs[2]);
            skvi_arg_u32(&args, nw);
            skvi_arg_mem(&args, bufs[4]);
            size_t g[2] = {D, H};
            e = skvi_args_end(&args);
            if (e == CL_SUCCESS)
                e = skvi_enqueue_items(c->ctx->device, c->rq, k, 2, g, 0, NULL, NULL);
        }
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(c->rq, bufs[4], CL_FALSE, 0, (size_t)H * nw * 2 * D * 4, out, 0, NULL, NULL);
        if (args.err != CL_SUCCESS)
            st = skvi_args_fail(ctx->error, &args, "key statistics");
        else if (e != CL_SUCCESS)
            st = skvi_cl_fail(ctx->error, e, "key statistics");
    }
    for (int i = 0; i < 5; i++) /* the enqueued commands keep what they use */
        if (bufs[i])
            clReleaseMemObject(bufs[i]);
    skvi_free(a, pages);
    skvi_free(a, tokens);
    (void)P;
    return st;
}

/* A completed flush into the statistics. */
static void flush_commit(skv_cache *c, skvi_seq *s, const flush_job *job)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim;
    for (uint32_t h = 0; h < H; h++) {
        skvi_key_stats *k = &s->stats[(size_t)job->layer * H + h];
        uint32_t *row = job->row;
        for (uint32_t w = 0; w < job->nw; w++) {
            row[w] = row_of(k, job->uw[w]); /* flush_enqueue added every window */
            const float *o = job->out + ((size_t)h * job->nw + w) * 2 * D;
            for (uint32_t d = 0; d < D; d++) {
                k->sum[(size_t)row[w] * D + d] += o[d];
                k->sum_unit[(size_t)row[w] * D + d] += o[D + d];
            }
        }
        for (uint32_t t = 0; t < job->m; t++)
            k->count[row[job->win[t]]]++;
    }
    s->pending_n[job->layer] = 0;
}

/* Every layer's flush enqueued, then one wait, then the commits; nothing changes unless
 * all were enqueued and completed. */
skv_status skvi_stats_flush(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    const skv_allocator *a = c->ctx->alloc;
    uint32_t n = 0;
    for (uint32_t l = 0; s->stats && l < c->desc.layers; l++)
        n += s->pending_n[l] && (layer == ~0u || l == layer);
    if (!n)
        return SKV_OK;
    flush_job *jobs = skvi_calloc(a, n, sizeof *jobs);
    if (!jobs)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "key statistics: out of memory");
    skv_status st = SKV_OK;
    uint32_t done = 0;
    for (uint32_t l = 0; st == SKV_OK && l < c->desc.layers; l++)
        if (s->pending_n[l] && (layer == ~0u || l == layer))
            st = flush_enqueue(c, s, l, &jobs[done++]);
    cl_int e = clFinish(c->rq); /* the one wait */
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "key statistics: clFinish");
    if (st != SKV_OK) /* no read is left writing into the jobs' arrays */
        skvi_drain(c->rq);
    for (uint32_t i = 0; st == SKV_OK && i < done; i++)
        flush_commit(c, s, &jobs[i]);
    for (uint32_t i = 0; i < done; i++) {
        skvi_free(a, jobs[i].win);
        skvi_free(a, jobs[i].uw);
        skvi_free(a, jobs[i].row);
        skvi_free(a, jobs[i].out);
    }
    skvi_free(a, jobs);
    return st;
}

/* The statistics vectors of (layer, head) as floats: rows 0..nw-1 the means (one row,
 * the global mean, unless windowed), row nw the unit mean. */
float *skvi_stats_vectors(skv_cache *c, const skvi_seq *s, uint32_t layer, uint32_t head, uint32_t *nw_out,
                          uint32_t **win_out)
{
    const uint32_t D = c->desc.head_dim;
    const skvi_key_stats *k = s->stats ? &s->stats[(size_t)layer * c->desc.kv_heads + head] : NULL;
    int windowed = c->desc.scorer == SKV_SCORER_MANIFOLD_WINDOWED;
    uint32_t nw = windowed && k && k->n_windows ? k->n_windows : 1;
    float *v = skvi_calloc(c->ctx->alloc, (size_t)(nw + 1) * D, sizeof *v);
    uint32_t *win = skvi_calloc(c->ctx->alloc, nw, sizeof *win);
    if (!v || !win) {
        skvi_free(c->ctx->alloc, v);
        skvi_free(c->ctx->alloc, win);
        return NULL;
    }
    if (k && k->n_windows) {
        uint64_t total = 0;
        for (uint32_t w = 0; w < k->n_windows; w++)
            total += k->count[w];
        for (uint32_t w = 0; windowed && w < nw; w++)
            win[w] = k->win[w];
        for (uint32_t d = 0; d < D; d++) {
            double all = 0, unit = 0;
            for (uint32_t w = 0; w < k->n_windows; w++) {
                all += k->sum[(size_t)w * D + d];
                unit += k->sum_unit[(size_t)w * D + d];
                if (windowed)
                    v[(size_t)w * D + d] = k->count[w] ? (float)(k->sum[(size_t)w * D + d] / k->count[w]) : 0.0f;
            }
            if (!windowed)
                v[d] = total ? (float)(all / total) : 0.0f;
            v[(size_t)nw * D + d] = total ? (float)(unit / total) : 0.0f;
        }
    }
    *nw_out = nw;
    *win_out = win;
    return v;
}
