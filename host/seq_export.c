/* Export and import of one sequence's pages and scorer state (docs/export.md): KV
 * transfer between a prefill node and a decode node, or to disk. The byte format and
 * its parser are src/seq_format.[ch]; this file reads pages back from wherever they
 * live (device or host pool) into the format, and writes an import's pages into fresh
 * pages of the same memory kinds, all or nothing. */
#include <string.h>

#include "cache_internal.h"
#include "seq_format.h"

/* A writer that only counts (b NULL), or fills b[cap]. */
typedef struct writer {
    uint8_t *b;
    size_t at;
} writer;

static void put(writer *w, const void *src, size_t n)
{
    if (w->b && n)
        memcpy(w->b + w->at, src, n);
    w->at += n;
}
static void put_u32(writer *w, uint32_t v)
{
    uint8_t b[4];
    skvi_put32(b, v);
    put(w, b, 4);
}
static void put_u64(writer *w, uint64_t v)
{
    uint8_t b[8];
    skvi_put64(b, v);
    put(w, b, 8);
}

static int has_stats(uint32_t scorer)
{
    return scorer == SKV_SCORER_KEYDIFF || scorer == SKV_SCORER_MANIFOLD || scorer == SKV_SCORER_MANIFOLD_WINDOWED;
}

static uint32_t seq_flags(const skv_cache *c, const skvi_seq *s)
{
    uint32_t f = 0;
    if (has_stats(c->desc.scorer))
        f |= SKVI_SEQ_KEY_STATS;
    if (c->desc.scorer == SKV_SCORER_SNAPKV)
        f |= SKVI_SEQ_SNAP;
    if (c->desc.scorer == SKV_SCORER_OBSERVED)
        f |= SKVI_SEQ_OBSERVED;
    if (s->kept_scores)
        f |= SKVI_SEQ_KEPT;
    return f;
}

/* Writes (or, w->b NULL, measures) the export of s. Page and observed-attention
 * contents are read from the device into w->b without a wait on ctx->queue. */
static skv_status serialize(skv_cache *c, const skvi_seq *s, writer *w)
{
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads, D = c->desc.head_dim, P = c->desc.page_tokens;
    const size_t n_lists = skvi_list_count(c);
    const uint32_t flags = seq_flags(c, s);
    uint32_t tiers = 0;
    uint64_t pages = 0, host = 0;
    for (size_t i = 0; i < n_lists; i++) {
        const skvi_page_list *l = &s->lists[i];
        if (l->n)
            tiers |= 1u << SKVI_LIST_TIER(i);
        pages += l->n;
        for (uint32_t j = 0; j < l->n; j++)
            host += (l->ids[j] & SKVI_HOST_BIT) != 0;
    }
    /* the header */
    put(w, SKVI_SEQ_MAGIC, 8);
    put_u32(w, SKVI_SEQ_VERSION);
    put_u32(w, SKVI_SEQ_HEADER_BYTES);
    size_t total_at = w->at;
    put_u64(w, 0); /* the total, patched at the end */
    put_u32(w, L);
    put_u32(w, c->desc.q_heads);
    put_u32(w, H);
    put_u32(w, D);
    put_u32(w, P);
    put_u32(w, tiers);
    put_u32(w, SKV_F16);
    put_u32(w, (uint32_t)c->desc.scorer);
    put_u32(w, c->desc.score_window);
    put_u32(w, flags);
    put_u64(w, c->desc.rotation_seed);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        put_u64(w, tiers & (1u << t) ? skvi_ada_codebook(c, (skv_tier)t) : 0);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        put_u64(w, skvi_tier_page_bytes((skv_tier)t, D, P));
    put_u64(w, s->rdr_runs);
    put_u64(w, pages);
    put_u64(w, host);
    /* layers, lists, pages */
    for (uint32_t l = 0; l < L; l++) {
        put_u64(w, s->len[l]);
        put_u64(w, (uint64_t)s->next_pos[l]);
        put_u64(w, s->rdr_mark[l]);
    }
    for (size_t i = 0; i < n_lists; i++) {
        const skvi_page_list *l = &s->lists[i];
        put_u32(w, l->tokens);
        put_u32(w, l->n);
        for (uint32_t j = 0; j < l->n; j++) {
            uint8_t m = (l->ids[j] & SKVI_HOST_BIT) != 0;
            put(w, &m, 1);
        }
    }
    for (size_t i = 0; i < n_lists; i++) {
        const skvi_page_list *l = &s->lists[i];
        const skv_tier t = SKVI_LIST_TIER(i);
        const size_t pb = (size_t)skvi_tier_page_bytes(t, D, P);
        for (uint32_t j = 0; j < l->n; j++) {
            if (w->b) {
                size_t off;
                cl_mem m = skvi_pool_locate(skvi_entry_pool(c, t, l->ids[j]), l->ids[j] & ~SKVI_HOST_BIT, &off);
                cl_int e = clEnqueueReadBuffer(c->ctx->queue, m, CL_FALSE, off, pb, w->b + w->at, 0, NULL, NULL);
                if (e != CL_SUCCESS)
                    return skvi_cl_fail(c->ctx->error, e, "skv_seq_export: reading a page: clEnqueueReadBuffer");
            }
            w->at += pb;
        }
    }
    if (flags & SKVI_SEQ_KEY_STATS) {
        for (uint32_t l = 0; l < L; l++) {
            put_u32(w, s->pending_n[l]);
            put(w, s->pending_pos[l], (size_t)s->pending_n[l] * 4);
        }
        for (size_t i = 0; i < (size_t)L * H; i++) {
            const skvi_key_stats *k = &s->stats[i];
            put_u32(w, k->n_windows);
            put(w, k->win, (size_t)k->n_windows * 4);
            put(w, k->sum, (size_t)k->n_windows * D * 8);
            put(w, k->sum_unit, (size_t)k->n_windows * D * 8);
            put(w, k->count, (size_t)k->n_windows * 8);
        }
    }
    if (flags & SKVI_SEQ_SNAP)
        for (uint32_t l = 0; l < L; l++) {
            uint32_t n = s->snap_n ? s->snap_n[l] : 0;
            put_u32(w, n);
            if (n) {
                put(w, s->snap_q[l], (size_t)n * c->desc.q_heads * D * 4);
                put(w, s->snap_pos[l], (size_t)n * 4);
            }
        }
    if (flags & SKVI_SEQ_OBSERVED)
        for (uint32_t l = 0; l < L; l++) {
            uint32_t cap = s->obs_acc && s->obs_acc[l] ? s->obs_cap[l] : 0;
            put_u32(w, cap);
            put_u32(w, s->obs_steps ? s->obs_steps[l] : 0);
            if (cap && w->b) {
                cl_int e = clEnqueueReadBuffer(c->ctx->queue, s->obs_acc[l], CL_FALSE, 0, (size_t)H * cap * 4,
                                               w->b + w->at, 0, NULL, NULL);
                if (e != CL_SUCCESS)
                    return skvi_cl_fail(c->ctx->error, e, "skv_seq_export: reading observed attention: clEnqueueReadBuffer");
            }
            w->at += (size_t)H * cap * 4;
            put(w, cap ? s->obs_from[l] : NULL, (size_t)cap * 4);
        }
    if (flags & SKVI_SEQ_KEPT)
        for (size_t i = 0; i < n_lists; i++) {
            uint32_t n = skvi_kept_scores_valid(c, s, i);
            put_u32(w, n);
            if (n) {
                put(w, s->kept_scores[i].score, (size_t)n * 4);
                put(w, s->kept_scores[i].ksq, (size_t)n * 4);
                put(w, s->kept_scores[i].pos, (size_t)n * 4);
            }
        }
    w->at += SKVI_SEQ_TRAILER_BYTES;
    if (w->b)
        skvi_put64(w->b + total_at, w->at);
    return SKV_OK;
}

/* The export of seq into buf[cap] (buf NULL: the size alone). */
static skv_status export_impl(skv_cache *c, skv_seq_id seq, void *buf, size_t cap, size_t *size, const char *fn)
{
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st != SKV_OK)
        return st;
    if (s->hetero || s->calib)
        return skvi_fail(c->ctx->error, SKV_ERR_UNSUPPORTED,
                         "%s: sequence %u runs HeteroCache or a calibration; its state is not exported", fn, seq);
    writer w = {NULL, 0};
    st = serialize(c, s, &w);
    if (st != SKV_OK)
        return st;
    *size = w.at;
    if (!buf)
        return SKV_OK;
    if (cap < w.at)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: the export needs %zu bytes, cap is %zu", fn, w.at,
                         cap);
    st = skvi_finish(c->ctx); /* appends and page moves complete */
    if (st != SKV_OK)
        return st;
    w = (writer){buf, 0};
    st = serialize(c, s, &w);
    if (st == SKV_OK) {
        cl_int e = clFinish(c->ctx->queue);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "skv_seq_export: clFinish");
    }
    if (st != SKV_OK) {
        skvi_drain(c->ctx->queue); /* no read is left writing into buf */
        return st;
    }
    skvi_put64((uint8_t *)buf + w.at - SKVI_SEQ_TRAILER_BYTES, skvi_hash64(buf, w.at - SKVI_SEQ_TRAILER_BYTES));
    return SKV_OK;
}

skv_status skv_seq_export(skv_cache *c, skv_seq_id seq, void *buf, size_t cap, size_t *size)
{
    skvi_clear_error();
    if (!c || !size)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_export: cache or size is NULL");
    return export_impl(c, seq, buf, cap, size, "skv_seq_export");
}

/* Whether the destination can hold f's pages exactly, and take its scorer state. */
static skv_status compatible(skv_cache *c, const skvi_seq_format *f, const char *fn)
{
    const skv_cache_desc *d = &c->desc;
    char *err = c->ctx->error;
    if (f->layers != d->layers || f->q_heads != d->q_heads || f->kv_heads != d->kv_heads || f->head_dim != d->head_dim)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                         "%s: the export's geometry (layers %u, q_heads %u, kv_heads %u, head_dim %u) is not the cache's "
                         "(%u, %u, %u, %u)",
                         fn, f->layers, f->q_heads, f->kv_heads, f->head_dim, d->layers, d->q_heads, d->kv_heads,
                         d->head_dim);
    if (f->page_tokens != d->page_tokens)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED, "%s: the export's pages hold %u tokens, the cache's %u", fn,
                         f->page_tokens, d->page_tokens);
    if (f->tiers & ~d->tiers)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED, "%s: the export holds pages of tiers 0x%x, the cache has tiers 0x%x",
                         fn, f->tiers, d->tiers);
    for (int t = SKV_TIER_F16 + 1; t < SKV_TIER_COUNT; t++) {
        if (!(f->tiers & (1u << t)))
            continue;
        if (f->rotation_seed != d->rotation_seed)
            return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                             "%s: the export's ADA pages were rotated with seed %llu, the cache's seed is %llu", fn,
                             (unsigned long long)f->rotation_seed, (unsigned long long)d->rotation_seed);
        if (f->codebook[t] != skvi_ada_codebook(c, (skv_tier)t))
            return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                             "%s: tier %d's codebook differs (export %016llx, cache %016llx): another skv version?", fn,
                             t, (unsigned long long)f->codebook[t], (unsigned long long)skvi_ada_codebook(c, (skv_tier)t));
    }
    int needs_state = has_stats(d->scorer) || d->scorer == SKV_SCORER_SNAPKV || d->scorer == SKV_SCORER_OBSERVED;
    if (needs_state && (f->scorer != (uint32_t)d->scorer ||
                        (d->scorer == SKV_SCORER_MANIFOLD_WINDOWED && f->score_window != d->score_window)))
        return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                         "%s: the cache's scorer %d (window %u) needs state the export's scorer %u (window %u) did not "
                         "keep",
                         fn, (int)d->scorer, d->score_window, f->scorer, f->score_window);
    if (f->host_pages && c->budget[SKV_MEM_HOST] == 0)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED,
                         "%s: the export holds %llu pages in host memory and the cache has no host tier "
                         "(host_budget_bytes 0); fetch them before exporting",
                         fn, (unsigned long long)f->host_pages);
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            if (f->tier_pages[t][m] > 0x7FFFFFFFu)
                return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: %llu pages of tier %d", fn,
                                 (unsigned long long)f->tier_pages[t][m], t);
    return SKV_OK;
}

/* The scorer state of an import, into s (host arrays and observed buffers). */
static skv_status import_state(skv_cache *c, skvi_seq *s, const uint8_t *b, const skvi_seq_format *f, const char *fn)
{
    const skv_allocator *a = c->ctx->alloc;
    const uint32_t L = f->layers, H = f->kv_heads, D = f->head_dim;
    char *err = c->ctx->error;
    if (f->scorer != (uint32_t)c->desc.scorer)
        return SKV_OK; /* a scorer that keeps no state (compatible() checked) */
    size_t at = f->off_stats;
    if ((f->flags & SKVI_SEQ_KEY_STATS) && s->stats) {
        for (uint32_t l = 0; l < L; l++) {
            uint32_t n = skvi_le32(b + at);
            if (skvi_stats_reserve(c, s, l, n) != SKV_OK)
                return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
            if (n)
                memcpy(s->pending_pos[l], b + at + 4, (size_t)n * 4);
            s->pending_n[l] = n;
            at += 4 + (size_t)n * 4;
        }
        for (size_t i = 0; i < (size_t)L * H; i++) {
            skvi_key_stats *k = &s->stats[i];
            uint32_t nw = skvi_le32(b + at);
            at += 4;
            if (!nw)
                continue;
            k->win = skvi_alloc(a, (size_t)nw * 4);
            k->sum = skvi_alloc(a, (size_t)nw * D * 8);
            k->sum_unit = skvi_alloc(a, (size_t)nw * D * 8);
            k->count = skvi_alloc(a, (size_t)nw * 8);
            if (!k->win || !k->sum || !k->sum_unit || !k->count)
                return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
            k->n_windows = nw;
            for (uint32_t w = 0; w < nw; w++)
                k->win[w] = skvi_le32(b + at + 4 * (size_t)w);
            at += (size_t)nw * 4;
            memcpy(k->sum, b + at, (size_t)nw * D * 8);
            at += (size_t)nw * D * 8;
            memcpy(k->sum_unit, b + at, (size_t)nw * D * 8);
            at += (size_t)nw * D * 8;
            memcpy(k->count, b + at, (size_t)nw * 8);
            at += (size_t)nw * 8;
        }
    }
    if (f->flags & SKVI_SEQ_SNAP) {
        at = f->off_snap;
        s->snap_q = skvi_calloc(a, L, sizeof *s->snap_q);
        s->snap_pos = skvi_calloc(a, L, sizeof *s->snap_pos);
        s->snap_n = skvi_calloc(a, L, sizeof *s->snap_n);
        if (!s->snap_q || !s->snap_pos || !s->snap_n)
            return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        for (uint32_t l = 0; l < L; l++) {
            uint32_t n = skvi_le32(b + at);
            at += 4;
            if (!n)
                continue;
            size_t qb = (size_t)n * f->q_heads * D * 4;
            s->snap_q[l] = skvi_alloc(a, qb);
            s->snap_pos[l] = skvi_alloc(a, (size_t)n * 4);
            if (!s->snap_q[l] || !s->snap_pos[l])
                return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
            memcpy(s->snap_q[l], b + at, qb);
            memcpy(s->snap_pos[l], b + at + qb, (size_t)n * 4);
            s->snap_n[l] = n;
            at += qb + (size_t)n * 4;
        }
    }
    if (f->flags & SKVI_SEQ_OBSERVED) {
        at = f->off_obs;
        s->obs_acc = skvi_calloc(a, L, sizeof *s->obs_acc);
        s->obs_cap = skvi_calloc(a, L, sizeof *s->obs_cap);
        s->obs_from = skvi_calloc(a, L, sizeof *s->obs_from);
        s->obs_steps = skvi_calloc(a, L, sizeof *s->obs_steps);
        if (!s->obs_acc || !s->obs_cap || !s->obs_from || !s->obs_steps)
            return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        for (uint32_t l = 0; l < L; l++) {
            uint32_t cap = skvi_le32(b + at);
            s->obs_steps[l] = skvi_le32(b + at + 4);
            at += 8;
            if (!cap)
                continue;
            size_t acc_bytes = (size_t)H * cap * 4;
            s->obs_from[l] = skvi_alloc(a, (size_t)cap * 4);
            if (!s->obs_from[l])
                return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
            memcpy(s->obs_from[l], b + at + acc_bytes, (size_t)cap * 4);
            cl_int e;
            s->obs_acc[l] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, acc_bytes, NULL, &e);
            if (e != CL_SUCCESS)
                return skvi_cl_fail(err, e, "skv_seq_import: observed attention: clCreateBuffer");
            s->obs_cap[l] = cap;
            e = clEnqueueWriteBuffer(c->ctx->queue, s->obs_acc[l], CL_FALSE, 0, acc_bytes, b + at, 0, NULL, NULL);
            if (e != CL_SUCCESS)
                return skvi_cl_fail(err, e, "skv_seq_import: observed attention: clEnqueueWriteBuffer");
            at += acc_bytes + (size_t)cap * 4;
        }
    }
    return SKV_OK;
}

/* Takes the pages of every list (memory kinds as exported) and enqueues their writes. */
static skv_status import_pages(skv_cache *c, skvi_seq *s, const uint8_t *b, const skvi_seq_format *f, const char *fn)
{
    const size_t n_lists = skvi_list_count(c);
    size_t lo = f->off_lists;
    for (size_t i = 0; i < n_lists; i++) { /* list capacity: it changes no content */
        uint32_t n = skvi_le32(b + lo + 4);
        if (skvi_list_reserve(c, &s->lists[i], n) != SKV_OK)
            return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
        lo += 8 + n;
    }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++) {
            skv_status st = skvi_pool_reserve(c, &c->pools[t][m], (uint32_t)f->tier_pages[t][m]);
            if (st != SKV_OK)
                return skvi_fail(c->ctx->error, st, "%s: %llu pages of tier %d in %s memory: %s", fn,
                                 (unsigned long long)f->tier_pages[t][m], t, m ? "host" : "device",
                                 skv_context_last_error(c->ctx));
        }
    lo = f->off_lists;
    size_t data = f->off_pages;
    for (size_t i = 0; i < n_lists; i++) { /* from here on nothing can run short */
        skvi_page_list *l = &s->lists[i];
        const skv_tier t = SKVI_LIST_TIER(i);
        uint32_t n = skvi_le32(b + lo + 4);
        for (uint32_t j = 0; j < n; j++) {
            int host = b[lo + 8 + j];
            l->ids[l->n++] = skvi_pool_take(&c->pools[t][host]) | (host ? SKVI_HOST_BIT : 0);
        }
        l->tokens = skvi_le32(b + lo);
        lo += 8 + n;
    }
    for (size_t i = 0; i < n_lists; i++) {
        const skvi_page_list *l = &s->lists[i];
        const skv_tier t = SKVI_LIST_TIER(i);
        const size_t pb = (size_t)f->page_bytes[t];
        for (uint32_t j = 0; j < l->n; j++, data += pb) {
            size_t off;
            cl_mem m = skvi_pool_locate(skvi_entry_pool(c, t, l->ids[j]), l->ids[j] & ~SKVI_HOST_BIT, &off);
            cl_int e = clEnqueueWriteBuffer(c->ctx->queue, m, CL_FALSE, off, pb, b + data, 0, NULL, NULL);
            if (e != CL_SUCCESS)
                return skvi_cl_fail(c->ctx->error, e, "skv_seq_import: writing a page: clEnqueueWriteBuffer");
        }
    }
    return SKV_OK;
}

static skv_status import_impl(skv_cache *c, const void *buf, size_t size, skv_seq_id *out, const char *fn)
{
    skvi_seq_format f;
    skv_status st = skvi_seq_format_parse(buf, size, &f, c->ctx->error);
    if (st == SKV_OK)
        st = compatible(c, &f, fn);
    if (st == SKV_OK)
        st = skvi_finish(c->ctx); /* pages a pending move still reads are not handed out again */
    skv_seq_id id;
    if (st == SKV_OK)
        st = skvi_seq_new(c, fn, &id);
    if (st != SKV_OK)
        return st;
    const uint8_t *b = buf;
    skvi_seq *s = &c->seqs[id];
    for (uint32_t l = 0; l < f.layers; l++) {
        const uint8_t *p = b + f.off_layers + 24 * (size_t)l;
        s->len[l] = skvi_le64(p);
        s->next_pos[l] = (int64_t)skvi_le64(p + 8);
        s->rdr_mark[l] = skvi_le64(p + 16);
    }
    s->rdr_runs = f.rdr_runs;
    st = import_pages(c, s, b, &f, fn);
    if (st == SKV_OK)
        st = import_state(c, s, b, &f, fn);
    if (st == SKV_OK && (f.flags & SKVI_SEQ_KEPT) && f.scorer == (uint32_t)c->desc.scorer) {
        size_t at = f.off_kept;
        for (size_t i = 0; st == SKV_OK && i < skvi_list_count(c); i++) {
            uint32_t n = skvi_le32(b + at);
            if (n)
                st = skvi_kept_scores_put(c, s, i, b + at + 4, b + at + 4 + 4ull * n, b + at + 4 + 8ull * n, n);
            at += 4 + 12ull * n;
        }
    }
    if (st == SKV_OK) {
        cl_int e = clFinish(c->ctx->queue); /* the writes read buf: done before the call returns */
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "skv_seq_import: clFinish");
    }
    if (st != SKV_OK) {
        skvi_drain(c->ctx->queue); /* no write still reads buf, none writes a page returned to the pool */
        skvi_seq_release(c, s);
        return st;
    }
    s->live = 1;
    *out = id;
    return SKV_OK;
}

skv_status skv_seq_import(skv_cache *c, const void *buf, size_t size, skv_seq_id *out)
{
    skvi_clear_error();
    if (!c || !buf || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_seq_import: cache, buf or out is NULL");
    return import_impl(c, buf, size, out, "skv_seq_import");
}

static skv_status check_waits(skv_cache *c, cl_uint num_wait, const cl_event *wait_list, const char *fn)
{
    if ((num_wait == 0) != (wait_list == NULL))
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: num_wait and wait_list disagree", fn);
    return SKV_OK;
}


skv_status skv_seq_export_cl(skv_cache *c, skv_seq_id seq, cl_mem buf, size_t offset, size_t cap, size_t *size,
                             cl_uint num_wait, const cl_event *wait_list, cl_event *event)
{
    static const char fn[] = "skv_seq_export_cl";
    skvi_clear_error();
    if (!c || !size)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache or size is NULL", fn);
    skv_status st = check_waits(c, num_wait, wait_list, fn);
    if (st == SKV_OK)
        st = export_impl(c, seq, NULL, 0, size, fn);
    if (st != SKV_OK || !buf)
        return st;
    if (cap < *size)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: the export needs %zu bytes, cap is %zu", fn, *size,
                         cap);
    st = skvi_check_mem(c->ctx, buf, offset, *size, fn, "buf");
    if (st != SKV_OK)
        return st;
    uint8_t *stage = skvi_alloc(c->ctx->alloc, *size);
    if (!stage)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory (%zu bytes of staging)", fn, *size);
    st = export_impl(c, seq, stage, *size, size, fn);
    if (st == SKV_OK) { /* blocking: the staging is freed on return */
        cl_int e = clEnqueueWriteBuffer(c->ctx->queue, buf, CL_TRUE, offset, *size, stage, num_wait, wait_list, event);
        if (e != CL_SUCCESS) {
            skvi_drain(c->ctx->queue);
            st = skvi_cl_fail(c->ctx->error, e, "skv_seq_export_cl: clEnqueueWriteBuffer");
        }
    }
    skvi_free(c->ctx->alloc, stage);
    return st;
}

skv_status skv_seq_import_cl(skv_cache *c, cl_mem buf, size_t offset, size_t size, skv_seq_id *out, cl_uint num_wait,
                             const cl_event *wait_list, cl_event *event)
{
    static const char fn[] = "skv_seq_import_cl";
    skvi_clear_error();
    if (!c || !buf || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache, buf or out is NULL", fn);
    skv_status st = check_waits(c, num_wait, wait_list, fn);
    if (st == SKV_OK)
        st = skvi_check_mem(c->ctx, buf, offset, size, fn, "buf");
    if (st != SKV_OK)
        return st;
    uint8_t *stage = skvi_alloc(c->ctx->alloc, size ? size : 1);
    if (!stage)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory (%zu bytes of staging)", fn, size);
    cl_int e = size ? clEnqueueReadBuffer(c->ctx->queue, buf, CL_TRUE, offset, size, stage, num_wait, wait_list, NULL)
                    : CL_SUCCESS;
    if (e != CL_SUCCESS) {
        skvi_drain(c->ctx->queue);
        st = skvi_cl_fail(c->ctx->error, e, "skv_seq_import_cl: clEnqueueReadBuffer");
    }
    skv_seq_id id;
    if (st == SKV_OK)
        st = import_impl(c, stage, size, &id, fn);
    skvi_free(c->ctx->alloc, stage);
    if (st == SKV_OK && event) { /* the pages are written: an event for the caller's queue order */
        e = clEnqueueMarkerWithWaitList(c->ctx->queue, 0, NULL, event);
        if (e != CL_SUCCESS) {
            skvi_seq_release(c, &c->seqs[id]);
            return skvi_cl_fail(c->ctx->error, e, "skv_seq_import_cl: clEnqueueMarkerWithWaitList");
        }
    }
    if (st == SKV_OK)
        *out = id;
    return st;
}
