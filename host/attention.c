/* Decode attention over the paged cache: per tier, block tables in CSR form and a
 * split-K plan; the tier kernels (cl/decode.h: tier access + schedule; ADA tiers after
 * their query tables, cl/ada_query.cl) write their chunks' partials into one array, and
 * cl/decode_merge.cl combines every chunk of every tier by log-sum-exp. */
#include <math.h>
#include <string.h>

#include "cache_internal.h"

typedef struct tier_plan {
    uint32_t *indptr;  /* [B*H + 1] */
    uint32_t *indices; /* page ids */
    uint32_t *lens;    /* [B*H] tokens in this tier */
    uint64_t max_len, sum_len; /* the longest (sequence, kv-head) of the tier, and all of them */
    uint32_t tiles_per_chunk, n_chunks, chunk_offset;
    cl_mem bufs[3];    /* indptr, indices, lens on the device */
} tier_plan;

typedef struct decode_plan {
    tier_plan t[SKV_TIER_COUNT];
    uint32_t total_chunks;
} decode_plan;

static void plan_free(skv_cache *c, decode_plan *p)
{
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        skvi_free(c->ctx->alloc, p->t[t].indptr);
        skvi_free(c->ctx->alloc, p->t[t].indices);
        skvi_free(c->ctx->alloc, p->t[t].lens);
        for (int i = 0; i < 3; i++)
            if (p->t[t].bufs[i])
                clReleaseMemObject(p->t[t].bufs[i]);
    }
}

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

static cl_mem upload(skv_cache *c, const void *src, size_t bytes, cl_int *e)
{
    return clCreateBuffer(c->ctx->cl, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, bytes, (void *)src, e);
}

/* Entry j of list i of sequence s, if decode reads it: on the device, not in flight. */
static int readable(skv_cache *c, skvi_seq *s, size_t list, uint32_t j)
{
    if (s->lists[list].ids[j] & SKVI_HOST_BIT)
        return 0;
    return !s->hetero || skvi_hetero_entry_ready(c, s, (uint32_t)list, j);
}

/* Tokens of list i decode reads: its readable pages, all full but the last. */
static uint32_t readable_tokens(skv_cache *c, skvi_seq *s, size_t list, uint32_t *pages)
{
    const skvi_page_list *l = &s->lists[list];
    const uint32_t P = c->desc.page_tokens;
    uint32_t tokens = 0, n = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (readable(c, s, list, j)) {
            tokens += j + 1 == l->n ? l->tokens - j * P : P;
            n++;
        }
    *pages = n;
    return tokens;
}

/* The block tables of the batch. Pages in host memory (or still arriving) are left
 * out, unless all_pages: then they are an error (skv_attention_logits). */
static skv_status make_plan(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t B, int all_pages,
                            const char *fn, decode_plan *p)
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
    cl_int e = CL_SUCCESS;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        tier_plan *tp = &p->t[t];
        if (tp->max_len == 0)
            continue; /* no token of the batch is in this tier */
        if (pages[t] >= 0xFFFFFFFFull)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: batch too large", fn);
        tp->indptr = skvi_calloc(c->ctx->alloc, (size_t)B * H + 1, sizeof *tp->indptr);
        tp->indices = skvi_calloc(c->ctx->alloc, pages[t] ? pages[t] : 1, sizeof *tp->indices);
        tp->lens = skvi_calloc(c->ctx->alloc, (size_t)B * H, sizeof *tp->lens);
        if (!tp->indptr || !tp->indices || !tp->lens)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
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
                        if (readable(c, s, li, j))
                            tp->indices[k + m++] = l->ids[j];
                k += n;
            }
        tp->indptr[(size_t)B * H] = k;
        split(c, (skv_tier)t, B, tp);
        tp->chunk_offset = p->total_chunks;
        p->total_chunks += tp->n_chunks;
        tp->bufs[0] = upload(c, tp->indptr, ((size_t)B * H + 1) * 4, &e);
        if (e == CL_SUCCESS)
            tp->bufs[1] = upload(c, tp->indices, (size_t)(k ? k : 1) * 4, &e);
        if (e == CL_SUCCESS)
            tp->bufs[2] = upload(c, tp->lens, (size_t)B * H * 4, &e);
        if (e != CL_SUCCESS)
            return skvi_cl_fail(c->ctx->error, e, "decode attention: clCreateBuffer");
    }
    return SKV_OK;
}

/* Scratch buffer i of at least `bytes`, grown (never shrunk) on demand. Replacing one
 * that enqueued kernels still use is safe: OpenCL keeps it until they complete. */
static cl_mem scratch(skv_cache *c, int i, size_t bytes, cl_int *e)
{
    if (c->scratch[i] && c->scratch_bytes[i] >= bytes)
        return c->scratch[i];
    size_t grown = c->scratch_bytes[i] * 2 > bytes ? c->scratch_bytes[i] * 2 : bytes;
    cl_mem m = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, grown, NULL, e);
    if (*e == CL_SUCCESS && c->ctx->poison && (*e = skvi_poison(c->ctx, m, grown)) != CL_SUCCESS)
        clReleaseMemObject(m);
    if (*e != CL_SUCCESS)
        return NULL;
    if (c->scratch[i])
        clReleaseMemObject(c->scratch[i]);
    c->scratch[i] = m;
    c->scratch_bytes[i] = grown;
    return m;
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

/* Enqueues one tier's kernels (ADA: the query tables first); k is its decode kernel. */
static cl_int enqueue_tier(skv_cache *c, skv_tier t, const tier_plan *tp, uint32_t layer, uint32_t B, cl_mem q,
                           cl_ulong q_off, cl_uint q_dtype, float scale, cl_uint total_chunks, cl_mem partials,
                           cl_mem tables, cl_kernel k, cl_mem logits, cl_uint n_waits, const cl_event *waits,
                           cl_event *first)
{
    const uint32_t H = c->desc.kv_heads, G = c->group;
    cl_int e = CL_SUCCESS;
    cl_mem params = c->ada_params[t] ? c->ada_params[t] : tp->bufs[2]; /* F16: any buffer, unread */
    if (t != SKV_TIER_F16) {
        cl_kernel kq = c->k_query[t];
        cl_uint a = 0, lay = layer, hh = H, gg = G, lanes = c->decode[t].schedule == SKV_SCHEDULE_LANES; /* the tables' layout */
        e |= clSetKernelArg(kq, a++, sizeof q, &q);
        e |= clSetKernelArg(kq, a++, sizeof q_off, &q_off);
        e |= clSetKernelArg(kq, a++, sizeof q_dtype, &q_dtype);
        e |= clSetKernelArg(kq, a++, sizeof c->signs, &c->signs);
        e |= clSetKernelArg(kq, a++, sizeof params, &params);
        e |= clSetKernelArg(kq, a++, sizeof lay, &lay);
        e |= clSetKernelArg(kq, a++, sizeof hh, &hh);
        e |= clSetKernelArg(kq, a++, sizeof gg, &gg);
        e |= clSetKernelArg(kq, a++, sizeof lanes, &lanes);
        e |= clSetKernelArg(kq, a++, sizeof tables, &tables);
        size_t global = (size_t)B * c->desc.q_heads;
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, kq, 1, NULL, &global, NULL, n_waits, waits, first);
        n_waits = 0;
        waits = NULL;
        first = NULL;
        /* logits from codes: n sqrt(2/d) sum R T, times the softmax scale */
        scale *= sqrtf(2.0f / (float)c->desc.head_dim) * c->ada_logit_correction[t];
    }
    cl_uint a = SKVI_POOL_MAX_CHUNKS + 1, h_arg = H, tpc = tp->tiles_per_chunk, nc = tp->n_chunks,
            off = tp->chunk_offset;
    if (e == CL_SUCCESS)
        e = skvi_pool_set_args(&c->pools[t][SKV_MEM_DEVICE], k, 0);
    for (int i = 0; i < 3; i++)
        e |= clSetKernelArg(k, a++, sizeof tp->bufs[i], &tp->bufs[i]);
    e |= clSetKernelArg(k, a++, sizeof h_arg, &h_arg);
    e |= clSetKernelArg(k, a++, sizeof q, &q);
    e |= clSetKernelArg(k, a++, sizeof q_off, &q_off);
    e |= clSetKernelArg(k, a++, sizeof q_dtype, &q_dtype);
    e |= clSetKernelArg(k, a++, sizeof scale, &scale);
    e |= clSetKernelArg(k, a++, sizeof tpc, &tpc);
    e |= clSetKernelArg(k, a++, sizeof nc, &nc);
    e |= clSetKernelArg(k, a++, sizeof off, &off);
    e |= clSetKernelArg(k, a++, sizeof total_chunks, &total_chunks);
    e |= clSetKernelArg(k, a++, sizeof partials, &partials);
    e |= clSetKernelArg(k, a++, sizeof tables, &tables);
    e |= clSetKernelArg(k, a++, sizeof params, &params);
    cl_uint stride = (cl_uint)tp->max_len;
    cl_mem lg = logits ? logits : partials; /* written only with OBSERVE */
    e |= clSetKernelArg(k, a++, sizeof lg, &lg);
    e |= clSetKernelArg(k, a++, sizeof stride, &stride);
    size_t wg = c->decode[t].schedule == SKV_SCHEDULE_LANES ? 1 : c->decode[t].tile;
    size_t global[2] = {(size_t)tp->n_chunks * wg, (size_t)B * H}, local[2] = {wg, 1};
    if (c->decode[t].schedule == SKV_SCHEDULE_LANES) { /* decode_cpu: (sequence, kv-head) fastest */
        global[0] = (size_t)B * H;
        global[1] = tp->n_chunks;
    }
    if (e == CL_SUCCESS)
        e = clEnqueueNDRangeKernel(c->ctx->queue, k, 2, NULL, global, local, n_waits, waits, first);
    return e;
}

/* skv_attention_logits (one sequence): each tier's kept logits [H][G][max_len] to
 * out[q_head][capacity], tier after tier in cache order. */
static skv_status read_logits(skv_cache *c, const decode_plan *p, cl_mem *logits, float *out, size_t capacity,
                              const char *fn)
{
    const uint32_t H = c->desc.kv_heads, G = c->group;
    size_t most = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        most = p->t[t].max_len > most ? (size_t)p->t[t].max_len : most;
    float *tmp = skvi_alloc(c->ctx->alloc, (size_t)H * G * most * sizeof *tmp);
    size_t *base = skvi_calloc(c->ctx->alloc, H, sizeof *base); /* each head's tokens written so far */
    if (!tmp || !base) {
        skvi_free(c->ctx->alloc, tmp);
        skvi_free(c->ctx->alloc, base);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    cl_int e = CL_SUCCESS;
    for (int t = 0; e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) {
        const tier_plan *tp = &p->t[t];
        if (!tp->max_len)
            continue;
        e = clEnqueueReadBuffer(c->ctx->queue, logits[t], CL_TRUE, 0, (size_t)H * G * tp->max_len * sizeof *tmp, tmp, 0,
                                NULL, NULL);
        for (uint32_t h = 0; e == CL_SUCCESS && h < H; h++) {
            for (uint32_t g = 0; g < G; g++)
                memcpy(out + (size_t)(h * G + g) * capacity + base[h], tmp + ((size_t)h * G + g) * tp->max_len,
                       tp->lens[h] * sizeof *tmp);
            base[h] += tp->lens[h];
        }
    }
    skvi_free(c->ctx->alloc, tmp);
    skvi_free(c->ctx->alloc, base);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(c->ctx->error, e, "skv_attention_logits: clEnqueueReadBuffer");
}

/* The observe kernels of every tier over one sequence of the batch: adds its attention
 * probabilities by position into acc[kv_heads][acc_cap] (cl/observe.cl). */
typedef struct observe_arg {
    skv_cache *c;
    const decode_plan *p;
    cl_mem *logits; /* per tier, kept by the decode kernels */
    cl_mem ml;      /* the merge's (max, sum) per q-head */
} observe_arg;

static cl_int observe_rows(void *arg, uint32_t b, cl_mem acc, cl_uint acc_cap)
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
        cl_uint ka = SKVI_POOL_MAX_CHUNKS + 1, hh = c->desc.kv_heads, bb = b, stride = (cl_uint)tp->max_len;
        e = skvi_pool_set_args(&c->pools[t][SKV_MEM_DEVICE], k, 0);
        for (int i = 0; i < 3; i++)
            e |= clSetKernelArg(k, ka++, sizeof tp->bufs[i], &tp->bufs[i]);
        e |= clSetKernelArg(k, ka++, sizeof hh, &hh);
        e |= clSetKernelArg(k, ka++, sizeof bb, &bb);
        e |= clSetKernelArg(k, ka++, sizeof o->logits[t], &o->logits[t]);
        e |= clSetKernelArg(k, ka++, sizeof stride, &stride);
        e |= clSetKernelArg(k, ka++, sizeof o->ml, &o->ml);
        e |= clSetKernelArg(k, ka++, sizeof acc, &acc);
        e |= clSetKernelArg(k, ka++, sizeof acc_cap, &acc_cap);
        size_t g[2] = {tp->max_len, hh};
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, k, 2, NULL, g, NULL, 0, NULL, NULL);
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

static skv_status decode_impl(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t B, skv_dtype q_dtype,
                              const void *q_host, cl_mem q_mem, size_t q_off, float scale, skv_dtype out_dtype,
                              void *out_host, cl_mem out_mem, size_t out_off, cl_uint num_wait,
                              const cl_event *wait_list, cl_event *event, float *logits_host, size_t capacity,
                              size_t *counts, const char *fn)
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
    if ((!q_host && !q_mem) || (!out_host && !out_mem && !logits_host))
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

    /* HeteroCache: arrived pages, the last drift check (retrieval); then which
     * sequences want this step's top-k (the kept logits) */
    int hetero_logits = 0;
    for (uint32_t b = 0; !logits_host && b < B; b++) {
        skvi_seq *s = NULL;
        if (skvi_seq_get(c, seqs[b], fn, &s) != SKV_OK)
            break; /* make_plan reports it */
        if (repeated(seqs, b))
            continue;
        skvi_hetero_before_decode(c, s, layer);
        hetero_logits |= skvi_hetero_wants_logits(c, s, layer);
    }
    skvi_clear_error();
    decode_plan p;
    st = make_plan(c, layer, seqs, B, logits_host != NULL, fn, &p);
    for (uint32_t h = 0; st == SKV_OK && logits_host && h < H; h++) { /* B = 1 */
        uint64_t held = 0;
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            held += p.t[t].max_len ? p.t[t].lens[h] : 0;
        if (held > capacity)
            st = skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: kv-head %u holds %llu tokens, more than capacity %zu", fn, h,
                           (unsigned long long)held, capacity);
        counts[h] = (size_t)held;
    }
    if (st != SKV_OK) {
        plan_free(c, &p);
        return st;
    }
    cl_int e = CL_SUCCESS;
    size_t part_bytes = (size_t)B * H * p.total_chunks * G * (D + 2) * sizeof(float);
    cl_mem partials = scratch(c, 0, part_bytes, &e);
    size_t table_bytes = 0;
    for (int t = SKV_TIER_F16 + 1; t < SKV_TIER_COUNT; t++)
        if (p.t[t].max_len) {
            size_t bytes = (size_t)B * H * skvi_ada_table_floats(c, (skv_tier)t) * sizeof(float);
            table_bytes = bytes > table_bytes ? bytes : table_bytes;
        }
    cl_mem tables = NULL;
    if (e == CL_SUCCESS)
        tables = scratch(c, 1, table_bytes ? table_bytes : 4, &e);
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
        st = skvi_compute_waits(c, seqs, B, num_wait, wait_list, &n_waits, &waits, &owned);
    /* observed attention: every tier's logits are kept until the merge has (max, sum);
     * skv_attention_logits reads them back instead (and accumulates nothing) */
    const int observe = c->desc.scorer == SKV_SCORER_OBSERVED && !logits_host;
    cl_mem logits[SKV_TIER_COUNT] = {0};
    cl_kernel kernels[SKV_TIER_COUNT] = {0};
    cl_mem ml = e == CL_SUCCESS ? scratch(c, 2, (size_t)B * c->desc.q_heads * 2 * sizeof(float), &e) : NULL;
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        kernels[t] = c->k_decode[t];
        cl_kernel unused;
        if (p.t[t].max_len && (logits_host || hetero_logits))
            st = skvi_cache_logits_kernel(c, (skv_tier)t, &kernels[t]);
        if (st == SKV_OK && p.t[t].max_len && hetero_logits)
            st = skvi_cache_observe_kernel(c, (skv_tier)t, &unused);
    }
    for (int t = 0; (observe || logits_host || hetero_logits) && e == CL_SUCCESS && t < SKV_TIER_COUNT; t++)
        if (p.t[t].max_len)
            logits[t] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, (size_t)B * H * G * p.t[t].max_len * sizeof(float),
                                       NULL, &e);
    if (st == SKV_OK && e != CL_SUCCESS)
        st = skvi_cl_fail(err, e, "decode attention: clCreateBuffer");
    cl_event first = NULL, done = NULL;
    for (int t = 0; st == SKV_OK && e == CL_SUCCESS && t < SKV_TIER_COUNT; t++) {
        if (!p.t[t].max_len)
            continue;
        e = enqueue_tier(c, (skv_tier)t, &p.t[t], layer, B, qbuf, q_off, (cl_uint)q_dtype, scale, p.total_chunks,
                         partials, tables, kernels[t], logits[t], n_waits, waits,
                         c->ctx->profiling && !first ? &first : NULL);
        n_waits = 0; /* the first launch carries the waits; the rest follow in queue order */
        waits = NULL;
    }
    if (st == SKV_OK && e == CL_SUCCESS) {
        cl_kernel m = c->k_merge;
        cl_uint od = (cl_uint)out_dtype, nc = p.total_chunks, h_arg = H, a = 0;
        cl_ulong oo = out_off;
        e |= clSetKernelArg(m, a++, sizeof partials, &partials);
        e |= clSetKernelArg(m, a++, sizeof nc, &nc);
        e |= clSetKernelArg(m, a++, sizeof h_arg, &h_arg);
        e |= clSetKernelArg(m, a++, sizeof obuf, &obuf);
        e |= clSetKernelArg(m, a++, sizeof oo, &oo);
        e |= clSetKernelArg(m, a++, sizeof od, &od);
        e |= clSetKernelArg(m, a++, sizeof ml, &ml);
        size_t mglobal[2] = {D, (size_t)B * c->desc.q_heads};
        if (e == CL_SUCCESS)
            e = clEnqueueNDRangeKernel(c->ctx->queue, m, 2, NULL, mglobal, NULL, 0, NULL, &done);
        observe_arg oa = {c, &p, logits, ml};
        for (uint32_t b = 0; observe && e == CL_SUCCESS && b < B; b++) { /* after the merge, in queue order */
            skvi_seq *s = &c->seqs[seqs[b]];
            e = observe_rows(&oa, b, s->obs_acc[layer], s->obs_cap[layer]);
        }
        for (uint32_t b = 0; !logits_host && e == CL_SUCCESS && st == SKV_OK && b < B; b++)
            if (!repeated(seqs, b))
                st = skvi_hetero_after_decode(c, &c->seqs[seqs[b]], layer, b, observe_rows, &oa);
        if (e == CL_SUCCESS && out_host)
            e = clEnqueueReadBuffer(c->ctx->queue, obuf, CL_TRUE, 0, out_bytes, out_host, 0, NULL, NULL);
        if (e == CL_SUCCESS && logits_host)
            st = read_logits(c, &p, logits, logits_host, capacity, fn);
    }
    if (st == SKV_OK && e != CL_SUCCESS)
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
    skvi_free(c->ctx->alloc, owned);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (logits[t])
            clReleaseMemObject(logits[t]);
    cl_mem bufs[] = {qbuf != q_mem ? qbuf : NULL, obuf != out_mem ? obuf : NULL};
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
                       NULL, 0, NULL, "skv_attention_decode");
}

skv_status skv_attention_logits(skv_cache *c, uint32_t layer, skv_seq_id seq, skv_dtype q_dtype, const void *q,
                                float scale, float *out, size_t capacity, size_t *counts)
{
    if (!q || !out || !counts)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_logits: q, out or counts is NULL");
    return decode_impl(c, layer, &seq, 1, q_dtype, q, NULL, 0, scale, SKV_F32, NULL, NULL, 0, 0, NULL, NULL, out,
                       capacity, counts, "skv_attention_logits");
}

skv_status skv_attention_decode_cl(skv_cache *c, uint32_t layer, const skv_seq_id *seqs, uint32_t n_seqs,
                                   skv_dtype q_dtype, cl_mem q, size_t q_offset, float scale, skv_dtype out_dtype,
                                   cl_mem out, size_t out_offset, cl_uint num_wait, const cl_event *wait_list,
                                   cl_event *event)
{
    if (!q || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_attention_decode_cl: q or out is NULL");
    return decode_impl(c, layer, seqs, n_seqs, q_dtype, NULL, q, q_offset, scale, out_dtype, NULL, out, out_offset,
                       num_wait, wait_list, event, NULL, 0, NULL, "skv_attention_decode_cl");
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
