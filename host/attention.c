/* Decode attention over the paged cache: per tier, block tables in CSR form and a
 * split-K plan; the tier kernels (cl/decode.h: tier access + schedule; ADA tiers after
 * their query tables, cl/ada_query.cl) write their chunks' partials into one array, and
 * cl/decode_merge.cl combines every chunk of every tier by log-sum-exp. */
#include <math.h>
#include <string.h>

#include "cache_internal.h"

typedef struct tier_plan {
    uint32_t *indptr;  /* [B*H + 1], in the workspace's staging slot */
    uint32_t *indices; /* page ids */
    uint32_t *lens;    /* [B*H] tokens in this tier */
    uint64_t max_len, sum_len; /* the longest (sequence, kv-head) of the tier, and all of them */
    uint32_t tiles_per_chunk, n_chunks, chunk_offset;
    cl_mem bufs[3];    /* indptr, indices, lens on the device (the workspace's sub-buffers) */
} tier_plan;

typedef struct decode_plan {
    tier_plan t[SKV_TIER_COUNT];
    uint32_t total_chunks;
    uint32_t slot;   /* the staging slot */
    size_t words;    /* of it the tables use */
} decode_plan;

/* One decode call: skv_attention_decode (host q and out), skv_attention_decode_cl
 * (cl_mem q and out, waits, event) or skv_attention_logits (host q, logits out). */
typedef struct decode_args {
    uint32_t layer;
    const skv_seq_id *seqs;
    uint32_t B;
    skv_dtype q_dtype;
    const void *q_host;
    cl_mem q_mem;
    size_t q_off;
    float scale;
    skv_dtype out_dtype;
    void *out_host;
    cl_mem out_mem;
    size_t out_off;
    cl_uint num_wait;
    const cl_event *wait_list;
    cl_event *event;
    float *logits_host; /* skv_attention_logits: [q_heads][capacity] */
    size_t capacity;
    size_t *counts;
    const char *fn;
} decode_args;

/* Chunks per (sequence, kv-head): enough work-groups to fill the device chunks_per_cu
 * times over (the tier's decode parameters), never more than one per tile. */
static void split(const skv_cache *c, skv_tier t, uint32_t B, tier_plan *p)
{
    const skv_decode_params *dp = &c->decode[t];
    uint64_t tiles = (p->max_len + dp->tile - 1) / dp->tile;
    uint64_t groups = (uint64_t)B * c->desc.kv_heads;
    uint64_t want = (uint64_t)dp->chunks_per_cu * c->ctx->profile.compute_units;
    /* unequal lengths (a HeteroCache pivot beside satellites, per-head budgets): the
     * longest gets its token share of the device; decode_cpu splits each head's own
     * tokens into the chunks */
    uint64_t chunks = p->sum_len > 0 ? (want * p->max_len + p->sum_len - 1) / p->sum_len : (want + groups - 1) / groups;
    if (chunks > tiles)
        chunks = tiles;
    if (chunks == 0)
        chunks = 1;
    p->tiles_per_chunk = (uint32_t)((tiles + chunks - 1) / chunks);
    p->n_chunks = (uint32_t)((tiles + p->tiles_per_chunk - 1) / p->tiles_per_chunk);
}

/* Entry j of list i of sequence s, if decode reads it: on the device. */
static int readable(const skvi_seq *s, size_t list, uint32_t j)
{
    return !(s->lists[list].ids[j] & SKVI_HOST_BIT);
}

/* Tokens of list i decode reads: its readable pages, all full but the last. */
static uint32_t readable_tokens(skv_cache *c, skvi_seq *s, size_t list, uint32_t *pages)
{
    const skvi_page_list *l = &s->lists[list];
    const uint32_t P = c->desc.page_tokens;
    uint32_t tokens = 0, n = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (readable(s, list, j)) {
            tokens += j + 1 == l->n ? l->tokens - j * P : P;
            n++;
        }
    *pages = n;
    return tokens;
}

/* The block tables of the batch. Pages in host memory (or still arriving) are left
 * out, unless all_pages: then they are an error (skv_attention_logits). */
static skv_status make_plan(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t B, int all_pages,
                            size_t q_bytes, const char *fn, decode_plan *p)
{
    const uint32_t H = c->desc.kv_heads;
    memset(p, 0, sizeof *p);
    uint64_t pages[SKV_TIER_COUNT] = {0};
    for (uint32_t b = 0; b < B; b++) {
        skvi_seq *s = NULL;
        skv_status st = skvi_seq_get(c, seqs[b], fn, &s);
        if (st != SKV_OK)
            return st;
        if (s->len[layer] == 0)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u holds no tokens for layer %u", fn,
                             seqs[b], layer);
        for (uint32_t h = 0; h < H; h++) {
            uint64_t head_tokens = 0;
            for (int t = 0; t < SKV_TIER_COUNT; t++) {
                const size_t li = ((size_t)layer * H + h) * SKV_TIER_COUNT + t;
                const skvi_page_list *l = &s->lists[li];
                uint32_t n = 0, tokens = readable_tokens(c, s, li, &n);
                if (all_pages && n != l->n)
                    return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                                     "%s: sequence %u has pages of layer %u in host memory: skv_seq_fetch them "
                                     "first",
                                     fn, seqs[b], layer);
                pages[t] += n;
                head_tokens += tokens;
                if (tokens > p->t[t].max_len)
                    p->t[t].max_len = tokens;
            }
            if (head_tokens == 0)
                return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                                 "%s: sequence %u, layer %u, kv-head %u has no token in device memory", fn, seqs[b],
                                 layer, h);
        }
    }
    uint64_t rows = (uint64_t)B * H;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (pages[t] >= 0xFFFFFFFFull)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: batch too large", fn);
    skv_status st = skvi_ws_stage(c, rows, pages, q_bytes, &p->slot);
    if (st != SKV_OK)
        return st;
    const skvi_decode_ws *w = &c->ws;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        tier_plan *tp = &p->t[t];
        if (tp->max_len == 0)
            continue; /* no token of the batch is in this tier */
        uint32_t *stage = w->stage[p->slot].words;
        tp->indptr = stage + w->off[t][0];
        tp->indices = stage + w->off[t][1];
        tp->lens = stage + w->off[t][2];
        uint32_t k = 0;
        for (uint32_t b = 0; b < B; b++)
            for (uint32_t h = 0; h < H; h++) {
                skvi_seq *s = &c->seqs[seqs[b]];
                const size_t li = ((size_t)layer * H + h) * SKV_TIER_COUNT + t;
                const skvi_page_list *l = &s->lists[li];
                uint32_t n = 0;
                tp->indptr[b * H + h] = k;
                tp->lens[b * H + h] = readable_tokens(c, s, li, &n);
                tp->sum_len += tp->lens[b * H + h];
                if (n == l->n && l->n) /* a head may hold nothing in this tier */
                    memcpy(tp->indices + k, l->ids, l->n * sizeof *l->ids);
                else
                    for (uint32_t j = 0, m = 0; j < l->n; j++)
                        if (readable(s, li, j))
                            tp->indices[k + m++] = l->ids[j];
                k += n;
            }
        tp->indptr[rows] = k;
        split(c, (skv_tier)t, B, tp);
        tp->chunk_offset = p->total_chunks;
        p->total_chunks += tp->n_chunks;
        for (int i = 0; i < 3; i++)
            tp->bufs[i] = w->sub[t][i];
        p->words = w->off[t][2] + rows; /* lens come last in the tier's regions */
    }
    return SKV_OK;
}

/* The buffers and kernels of one call. */
typedef struct decode_run {
    cl_mem q, out;        /* the caller's, or the workspace's staging */
    size_t q_off, out_off;
    cl_mem partials, tables, ml;
    cl_mem logits[SKV_TIER_COUNT];    /* kept logits (observe, HeteroCache, skv_attention_logits) */
    cl_kernel kernels[SKV_TIER_COUNT]; /* each tier's decode kernel */
} decode_run;

/* Enqueues one tier's kernels (ADA: the query tables first). The first launch carries
 * the waits and, when asked, the event `first`. */
static cl_int enqueue_tier(skv_cache *c, skv_tier t, const decode_plan *p, const decode_args *a, const decode_run *r,
                           cl_uint n_waits, const cl_event *waits, cl_event *first)
{
    const tier_plan *tp = &p->t[t];
    const uint32_t H = c->desc.kv_heads, G = c->group, B = a->B;
    const int lanes = c->decode[t].schedule == SKV_SCHEDULE_LANES;
    cl_mem params = c->ada_params[t] ? c->ada_params[t] : tp->bufs[2]; /* F16: any buffer, unread */
    float scale = a->scale;
    cl_int e = CL_SUCCESS;
    if (t != SKV_TIER_F16) {
        skvi_args q = skvi_args_begin(c->k_query[t], 0);
        skvi_arg_mem(&q, r->q);
        skvi_arg_u64(&q, r->q_off);
        skvi_arg_u32(&q, (cl_uint)a->q_dtype);
        skvi_arg_mem(&q, c->signs);
        skvi_arg_mem(&q, params);
        skvi_arg_u32(&q, a->layer);
        skvi_arg_u32(&q, H);
        skvi_arg_u32(&q, G);
        skvi_arg_u32(&q, (cl_uint)lanes); /* the tables' layout */
        skvi_arg_mem(&q, r->tables);
        size_t global = (size_t)B * c->desc.q_heads;
        if ((e = skvi_args_end(&q)) == CL_SUCCESS)
            e = skvi_enqueue_items(c->ctx->device, c->ctx->queue, q.k, 1, &global, n_waits, waits, first);
        n_waits = 0;
        waits = NULL;
        first = NULL;
        /* logits from codes: n sqrt(2/d) sum R T, times the softmax scale */
        scale *= sqrtf(2.0f / (float)c->desc.head_dim) * c->ada_logit_correction[t];
    }
    skvi_args k = skvi_args_begin(r->kernels[t], 0);
    skvi_pool_bind(&k, &c->pools[t][SKV_MEM_DEVICE]);
    for (int i = 0; i < 3; i++)
        skvi_arg_mem(&k, tp->bufs[i]);
    skvi_arg_u32(&k, H);
    skvi_arg_mem(&k, r->q);
    skvi_arg_u64(&k, r->q_off);
    skvi_arg_u32(&k, (cl_uint)a->q_dtype);
    skvi_arg_f32(&k, scale);
    skvi_arg_u32(&k, tp->tiles_per_chunk);
    skvi_arg_u32(&k, tp->n_chunks);
    skvi_arg_u32(&k, tp->chunk_offset);
    skvi_arg_u32(&k, p->total_chunks);
    skvi_arg_mem(&k, r->partials);
    skvi_arg_mem(&k, r->tables);
    skvi_arg_mem(&k, params);
    skvi_arg_mem(&k, r->logits[t] ? r->logits[t] : r->partials); /* written only with OBSERVE */
    skvi_arg_u32(&k, (cl_uint)tp->max_len);
    size_t wg = lanes ? 1 : c->decode[t].tile;
    size_t global[2] = {(size_t)tp->n_chunks * wg, (size_t)B * H}, local[2] = {wg, 1};
    if (lanes) { /* decode_cpu: (sequence, kv-head) fastest */
        global[0] = (size_t)B * H;
        global[1] = tp->n_chunks;
    }
    cl_int ek = skvi_args_end(&k);
    if (e == CL_SUCCESS)
        e = ek;
    if (e == CL_SUCCESS)
        e = clEnqueueNDRangeKernel(c->ctx->queue, k.k, 2, NULL, global, local, n_waits, waits, first);
    return e;
}

/* skv_attention_logits (one sequence): each tier's kept logits [H][G][max_len] to
 * out[q_head][capacity], tier after tier in cache order. */
static skv_status read_logits(skv_cache *c, const decode_plan *p, const decode_run *r, float *out, size_t capacity,
                              const char *fn)
{
    const uint32_t H = c->desc.kv_heads, G = c->group;
    size_t most = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        most = p->t[t].max_len > most ? (size_t)p->t[t].max_len : most;
    skvi_decode_ws *w = &c->ws;
    if (skvi_array_reserve(c->ctx->alloc, (void **)&w->host_logits, &w->host_logits_cap, 0, (size_t)H * G * most,
                           sizeof *w->host_logits, 1024) != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    float *tmp = w->host_logits;
    cl_int e = CL_SUCCESS;
    for (int t = 0; e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) {
        const tier_plan *tp = &p->t[t];
        if (!tp->max_len)
            continue;
        e = clEnqueueReadBuffer(c->ctx->queue, r->logits[t], CL_TRUE, 0, (size_t)H * G * tp->max_len * sizeof *tmp,
                                tmp, 0, NULL, NULL);
        for (uint32_t h = 0; e == CL_SUCCESS && h < H; h++) {
            size_t base = 0; /* the head's tokens in earlier tiers */
            for (int u = 0; u < t; u++)
                base += p->t[u].max_len ? p->t[u].lens[h] : 0;
            for (uint32_t g = 0; g < G; g++)
                memcpy(out + (size_t)(h * G + g) * capacity + base, tmp + ((size_t)h * G + g) * tp->max_len,
                       tp->lens[h] * sizeof *tmp);
        }
    }
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(c->ctx->error, e, "skv_attention_logits: clEnqueueReadBuffer");
}

/* The observe kernels of every tier over one sequence of the batch: adds its attention
 * probabilities by position into acc[kv_heads][acc_cap] (cl/observe.cl). */
typedef struct observe_arg {
    skv_cache *c;
    const decode_plan *p;
    const cl_mem *logits; /* per tier, kept by the decode kernels */
    cl_mem ml;            /* the merge's (max, sum) per q-head */
} observe_arg;

static cl_int observe_rows(void *arg, uint32_t b, cl_mem acc, cl_uint acc_cap, cl_mem heads, cl_uint head_off,
                           cl_uint rows)
{
    const observe_arg *o = arg;
    skv_cache *c = o->c;
    cl_int e = CL_SUCCESS;
    for (int t = 0; e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) {
        const tier_plan *tp = &o->p->t[t];
        if (!tp->max_len)
            continue;
        cl_kernel k = c->k_observe[t]; /* built before anything was enqueued */
        if (!k || !o->logits[t])
            return CL_INVALID_KERNEL;
        skvi_args a = skvi_args_begin(k, 0);
        skvi_pool_bind(&a, &c->pools[t][SKV_MEM_DEVICE]);
        for (int i = 0; i < 3; i++)
            skvi_arg_mem(&a, tp->bufs[i]);
        skvi_arg_u32(&a, c->desc.kv_heads);
        skvi_arg_u32(&a, b);
        skvi_arg_mem(&a, heads);
        skvi_arg_u32(&a, head_off);
        skvi_arg_mem(&a, o->logits[t]);
        skvi_arg_u32(&a, (cl_uint)tp->max_len);
        skvi_arg_mem(&a, o->ml);
        skvi_arg_mem(&a, acc);
        skvi_arg_u32(&a, acc_cap);
        size_t g[2] = {tp->max_len, rows};
        if ((e = skvi_args_end(&a)) == CL_SUCCESS)
            e = skvi_enqueue_padded(c->ctx->queue, k, 2, g, 0, NULL, NULL);
    }
    return e;
}

/* Whether seqs[b] appeared earlier in the batch (its hooks ran already). */
static int repeated(const skv_seq_id *seqs, uint32_t b)
{
    for (uint32_t i = 0; i < b; i++)
        if (seqs[i] == seqs[b])
            return 1;
    return 0;
}

static skv_status check_args(skv_cache *c, const decode_args *a)
{
    const char *fn = a->fn;
    char *err = c->ctx->error;
    if (a->layer >= c->desc.layers)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u of %u", fn, a->layer, c->desc.layers);
    if (!a->seqs || a->B == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: no sequences (seqs NULL or n_seqs 0)", fn);
    if ((a->q_dtype != SKV_F32 && a->q_dtype != SKV_F16) || (a->out_dtype != SKV_F32 && a->out_dtype != SKV_F16))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: q and out must be SKV_F32 or SKV_F16", fn);
    if ((!a->q_host && !a->q_mem) || (!a->out_host && !a->out_mem && !a->logits_host))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: q or out is NULL", fn);
    if (!isfinite(a->scale))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: scale is not finite", fn);
    if ((a->num_wait == 0) != (a->wait_list == NULL))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: num_wait and wait_list disagree", fn);
    const size_t per_q = (size_t)a->B * c->desc.q_heads * c->desc.head_dim;
    const size_t bad = a->q_host ? skvi_first_nonfinite(a->q_dtype, a->q_host, per_q) : per_q;
    if (bad < per_q) /* it would turn its head's softmax into NaN */
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: q of sequence %zu, q-head %zu holds NaN or Inf (element %zu)", fn,
                         bad / ((size_t)c->desc.q_heads * c->desc.head_dim), bad / c->desc.head_dim % c->desc.q_heads,
                         bad % c->desc.head_dim);
    skv_status st = SKV_OK;
    if (a->q_mem)
        st = skvi_check_mem(c->ctx, a->q_mem, a->q_off, per_q * (a->q_dtype == SKV_F32 ? 4 : 2), a->fn, "q");
    if (st == SKV_OK && a->out_mem)
        st = skvi_check_mem(c->ctx, a->out_mem, a->out_off, per_q * (a->out_dtype == SKV_F32 ? 4 : 2), a->fn, "out");
    return st;
}

/* The call's buffers and kernels, all from the workspace and the cache's kernel table
 * (built on first use); the host queries' upload is enqueued. */
static skv_status prepare(skv_cache *c, const decode_args *a, const decode_plan *p, int keep_logits, int hetero,
                          decode_run *r)
{
    const uint32_t H = c->desc.kv_heads, D = c->desc.head_dim, G = c->group, B = a->B;
    memset(r, 0, sizeof *r);
    skv_status st = skvi_ws_buffer(c, SKVI_WS_PARTIALS, (size_t)B * H * p->total_chunks * G * (D + 2) * sizeof(float),
                                   &r->partials);
    size_t table_bytes = 4;
    for (int t = SKV_TIER_F16 + 1; t < SKV_TIER_COUNT; t++)
        if (p->t[t].max_len) {
            size_t bytes = (size_t)B * H * skvi_ada_table_floats(c, (skv_tier)t) * sizeof(float);
            table_bytes = bytes > table_bytes ? bytes : table_bytes;
        }
    if (st == SKV_OK)
        st = skvi_ws_buffer(c, SKVI_WS_TABLES, table_bytes, &r->tables);
    if (st == SKV_OK)
        st = skvi_ws_buffer(c, SKVI_WS_ML, (size_t)B * c->desc.q_heads * 2 * sizeof(float), &r->ml);
    const size_t per_q = (size_t)B * c->desc.q_heads * D;
    r->q = a->q_mem;
    r->q_off = a->q_off;
    size_t words = p->words;
    if (st == SKV_OK && !a->q_mem) { /* the host queries go up with the tables */
        memcpy(c->ws.stage[p->slot].words + c->ws.off_q, a->q_host, per_q * (a->q_dtype == SKV_F32 ? 4 : 2));
        r->q = c->ws.table;
        r->q_off = c->ws.off_q * 4;
        words = c->ws.off_q + (per_q * (a->q_dtype == SKV_F32 ? 4 : 2) + 3) / 4;
    }
    if (st == SKV_OK)
        st = skvi_ws_upload(c, p->slot, words);
    r->out = a->out_mem;
    r->out_off = a->out_off;
    if (st == SKV_OK && !a->out_mem) {
        st = skvi_ws_buffer(c, SKVI_WS_OUT, per_q * (a->out_dtype == SKV_F32 ? 4 : 2), &r->out);
        r->out_off = 0;
    }
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        r->kernels[t] = c->k_decode[t];
        if (!p->t[t].max_len)
            continue;
        cl_kernel unused;
        if (a->logits_host || hetero)
            st = skvi_cache_logits_kernel(c, (skv_tier)t, &r->kernels[t]);
        if (st == SKV_OK && hetero)
            st = skvi_cache_observe_kernel(c, (skv_tier)t, &unused);
        if (st == SKV_OK && keep_logits)
            st = skvi_ws_buffer(c, SKVI_WS_LOGITS + t, (size_t)B * H * G * p->t[t].max_len * sizeof(float),
                                &r->logits[t]);
    }
    return st;
}

/* Every kernel of the call, in queue order: the tiers, the merge, observed attention
 * and HeteroCache's top-k; then the host outputs are read back. */
static skv_status run(skv_cache *c, const decode_args *a, const decode_plan *p, const decode_run *r, int observe,
                      cl_event *first, cl_event *done)
{
    const uint32_t B = a->B, layer = a->layer;
    cl_uint n_waits = 0;
    const cl_event *waits = NULL;
    cl_event *owned = NULL;
    skv_status st = skvi_compute_waits(c, a->seqs, B, a->num_wait, a->wait_list, &n_waits, &waits, &owned);
    cl_int e = CL_SUCCESS;
    for (int t = 0; st == SKV_OK && e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) {
        if (!p->t[t].max_len)
            continue;
        e = enqueue_tier(c, (skv_tier)t, p, a, r, n_waits, waits, first && !*first ? first : NULL);
        n_waits = 0; /* the first launch carries the waits; the rest follow in queue order */
        waits = NULL;
    }
    skvi_free(c->ctx->alloc, owned);
    if (st == SKV_OK && e == CL_SUCCESS) {
        skvi_args m = skvi_args_begin(c->k_merge, 0);
        skvi_arg_mem(&m, r->partials);
        skvi_arg_u32(&m, p->total_chunks);
        skvi_arg_u32(&m, c->desc.kv_heads);
        skvi_arg_mem(&m, r->out);
        skvi_arg_u64(&m, r->out_off);
        skvi_arg_u32(&m, (cl_uint)a->out_dtype);
        skvi_arg_mem(&m, r->ml);
        size_t global[2] = {c->desc.head_dim, (size_t)B * c->desc.q_heads};
        if ((e = skvi_args_end(&m)) == CL_SUCCESS)
            e = skvi_enqueue_items(c->ctx->device, c->ctx->queue, m.k, 2, global, 0, NULL, done);
    }
    observe_arg oa = {c, p, r->logits, r->ml};
    for (uint32_t b = 0; !a->logits_host && st == SKV_OK && e == CL_SUCCESS && b < B; b++)
        if (!repeated(a->seqs, b))
            st = skvi_hetero_after_decode(c, &c->seqs[a->seqs[b]], layer, b, observe_rows, &oa);
    if (st == SKV_OK && e == CL_SUCCESS && a->out_host)
        e = clEnqueueReadBuffer(c->ctx->queue, r->out, CL_TRUE, 0,
                                (size_t)B * c->desc.q_heads * c->desc.head_dim * (a->out_dtype == SKV_F32 ? 4 : 2),
                                a->out_host, 0, NULL, NULL);
    if (st == SKV_OK && e == CL_SUCCESS && a->logits_host)
        st = read_logits(c, p, r, a->logits_host, a->capacity, a->fn);
    /* Observed attention last, once everything else has succeeded, so that a failed call
     * has accumulated nothing and its retry counts the step once. */
    for (uint32_t b = 0; observe && st == SKV_OK && e == CL_SUCCESS && b < B; b++) {
        skvi_seq *s = &c->seqs[a->seqs[b]];
        e = observe_rows(&oa, b, s->obs_acc[layer], s->obs_cap[layer], c->heads_all, 0, c->desc.kv_heads);
        if (e == CL_SUCCESS) /* the step the observed scores divide by (score_observed.c) */
            s->obs_steps[layer]++;
    }
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(c->ctx->error, e, "decode attention: enqueue");
    return st;
}

static skv_status decode_impl(skv_cache *c, const decode_args *a)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", a->fn);
    skv_status st = check_args(c, a);
    if (st != SKV_OK)
        return st;
    skvi_rdr_run_deferred(c);
    const uint32_t H = c->desc.kv_heads, B = a->B;
    c->ws.calls++;
    if (a->q_host) /* RDR's distortion model learns the query energy (rdr_model.c) */
        skvi_rdr_note_queries(c, a->layer, a->q_dtype, a->q_host, B, a->scale);

    /* HeteroCache: arrived pages, the last drift check (retrieval); then which
     * sequences want this step's top-k (the kept logits) */
    int hetero = 0;
    for (uint32_t b = 0; !a->logits_host && b < B; b++) {
        skvi_seq *s = NULL;
        if (skvi_seq_get(c, a->seqs[b], a->fn, &s) != SKV_OK)
            break; /* make_plan reports it */
        if (repeated(a->seqs, b))
            continue;
        skvi_hetero_before_decode(c, s, a->layer);
        hetero |= skvi_hetero_wants_logits(s, a->layer);
    }
    skvi_clear_error();
    decode_plan p;
    const size_t q_bytes = a->q_host ? (size_t)B * c->desc.q_heads * c->desc.head_dim * (a->q_dtype == SKV_F32 ? 4 : 2) : 0;
    st = make_plan(c, a->layer, a->seqs, B, a->logits_host != NULL, q_bytes, a->fn, &p);
    if (st != SKV_OK)
        return st; /* nothing enqueued */
    for (uint32_t h = 0; st == SKV_OK && a->logits_host && h < H; h++) { /* B = 1 */
        uint64_t held = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            held += p.t[t].max_len ? p.t[t].lens[h] : 0;
        if (held > a->capacity)
            st = skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: kv-head %u holds %llu tokens, more than capacity %zu",
                           a->fn, h, (unsigned long long)held, a->capacity);
        a->counts[h] = (size_t)held;
    }
    /* observed attention: every tier's logits are kept until the merge has (max, sum);
     * skv_attention_logits reads them back instead (and accumulates nothing) */
    const int observe = c->desc.scorer == SKV_SCORER_OBSERVED && !a->logits_host;
    decode_run r;
    if (st == SKV_OK)
        st = prepare(c, a, &p, observe || a->logits_host || hetero, hetero, &r);
    /* events: `done` when the caller or profiling asks for it, or to fence the staging
     * slot of an interop call (which returns before its work ran) */
    const int host = a->out_host || a->logits_host;
    cl_event first = NULL, done = NULL;
    int want_done = a->event || c->ctx->profiling || !host;
    if (st == SKV_OK)
        st = run(c, a, &p, &r, observe, c->ctx->profiling ? &first : NULL, want_done ? &done : NULL);
    if (st == SKV_OK && done && !host) /* an append behind it does not wait on the queue */
        skvi_rdr_note_caller_waits(c, a->num_wait, done);
    if (st == SKV_OK && a->q_mem) /* RDR's query energy (rdr_model.c), after the call's work in queue order */
        skvi_rdr_note_queries_cl(c, a->layer, a->q_dtype, a->q_mem, a->q_off, B, a->scale);
    if (st == SKV_OK && host) {
        skvi_ws_fence(c, p.slot, NULL); /* the call waited on its reads */
    } else if (done) {
        skvi_ws_fence(c, p.slot, done);
        c->ws.objects += !a->event && !c->ctx->profiling;
    } else {
        skvi_drain(c->ctx->queue); /* a failed call: its uploads may still read the staging */
        skvi_ws_fence(c, p.slot, NULL);
    }
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
    if (done && a->event && st == SKV_OK)
        *a->event = done;
    else if (done)
        clReleaseEvent(done);
    return st;
}

skv_status skv_attention_decode(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t n_seqs,
                                skv_dtype q_dtype, const void *q, float scale, skv_dtype out_dtype, void *out)
{
    if (!q || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_decode: q or out is NULL");
    const decode_args a = {.layer = layer, .seqs = seqs, .B = n_seqs, .q_dtype = q_dtype, .q_host = q,
                           .scale = scale, .out_dtype = out_dtype, .out_host = out, .fn = "skv_attention_decode"};
    return decode_impl(c, &a);
}

skv_status skv_attention_logits(skv_cache *c, uint32_t layer, skv_seq_id seq, skv_dtype q_dtype, const void *q,
                                float scale, float *out, size_t capacity, size_t *counts)
{
    if (!q || !out || !counts)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_logits: q, out or counts is NULL");
    const decode_args a = {.layer = layer, .seqs = &seq, .B = 1, .q_dtype = q_dtype, .q_host = q, .scale = scale,
                           .out_dtype = SKV_F32, .logits_host = out, .capacity = capacity, .counts = counts,
                           .fn = "skv_attention_logits"};
    return decode_impl(c, &a);
}

skv_status skv_attention_decode_cl(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t n_seqs,
                                   skv_dtype q_dtype, cl_mem q, size_t q_offset, float scale, skv_dtype out_dtype,
                                   cl_mem out, size_t out_offset, cl_uint num_wait, const cl_event *wait_list,
                                   cl_event *event)
{
    if (!q || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_decode_cl: q or out is NULL");
    const decode_args a = {.layer = layer, .seqs = seqs, .B = n_seqs, .q_dtype = q_dtype, .q_mem = q,
                           .q_off = q_offset, .scale = scale, .out_dtype = out_dtype, .out_mem = out,
                           .out_off = out_offset, .num_wait = num_wait, .wait_list = wait_list, .event = event,
                           .fn = "skv_attention_decode_cl"};
    return decode_impl(c, &a);
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
