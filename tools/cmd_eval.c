/* `skv eval`: the quality matrix — scorer x budget x tier set on the synthetic model
 * (tools/synth.c): for each cell a cache with RDR at that budget, the context streamed
 * in and compressed, then decode against exact fp64 attention over the original keys
 * and values. Every number is measured in the run. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "skv_ref.h"
#include "skv_tool.h"
#include "svg.h"
#include "synth.h"

void usage_eval(FILE *out)
{
    fprintf(out,
            "usage: skv eval [--tokens N | --kv FILE] [--seeds N] [--json FILE] [--csv FILE] [--svg FILE]\n"
            "                [--device SEL]\n"
            "       skv eval [--tokens N] --save-kv FILE [--save-dtype f32|f16]\n"
            "  The quality matrix on the synthetic model (2 layers, 4 kv-heads, 16 q-heads,\n"
            "  head_dim 128; default 4096 tokens, 4 single needles and 2 groups of 3 similar\n"
            "  needles; a few minutes on 2 CPU cores): scorers knorm, keydiff, manifold,\n"
            "  manifold_windowed, streaming, triattention, snapkv, observed x budgets 1/2, 1/4,\n"
            "  1/8, 1/16 of F16 x tier sets drop (F16 or drop), ada (F16 or A3V4 or drop),\n"
            "  rdr (every tier). The query scorers see the prefill's last 64 queries: SnapKV's\n"
            "  observation window, observed attention's 64 decode steps before compression,\n"
            "  TriAttention's query statistics (calibrated on them, RoPE inverted); every\n"
            "  cell passes them to skv_seq_observe_window, so RDR's distortion model knows\n"
            "  the query energy (README: RDR).\n"
            "  Per cell: bytes_ratio (achieved fraction of F16 bytes), out_rel_err (decode\n"
            "  output vs exact attention, relative L2, mean over 8 queries and both layers),\n"
            "  logit_rel_err (the logits decode computes for the held tokens, from their\n"
            "  stored form, vs the exact ones: relative L2 over q-heads and held tokens, the\n"
            "  same mean), topk_recall (share of the exact top-32 attended tokens still held),\n"
            "  needle_recall (needle queries whose output has cosine >= 0.9 with the needle's\n"
            "  value), multikey_recall (the same for the needles in groups of 3 whose keys\n"
            "  have cosine ~0.81, like RULER's multi-key NIAH: the query aimed at one must not\n"
            "  pull in its neighbours' values).\n"
            "  --seeds N: every cell run with ADA rotation seeds 0..N-1 (skv_cache_desc.\n"
            "  rotation_seed; default 1: seed 0, the built-in draw): each metric is the mean\n"
            "  over the seeds, and sd (out_rel_err_sd) is out_rel_err's standard deviation.\n"
            "  --svg FILE: output error and top-32 recall vs achieved bytes, a line per method.\n"
            "  --kv FILE: the same matrix on your model's keys, values and queries (no needles:\n"
            "  needle_recall and multikey_recall are null). The file: nine little-endian uint32\n"
            "  (magic 0x564B4B53 \"SKKV\", version 1 or 2, dtype 0 = float32 or 1 = fp16, layers,\n"
            "  kv_heads, q_heads, head_dim, tokens, n_queries); version 2 adds three (n_window,\n"
            "  RoPE theta as float32 bits, RoPE layout 0 = pairs (i, i + d/2) or 1 = (2i, 2i+1));\n"
            "  then per layer K[tokens][kv_heads][head_dim], V of the same shape (positions\n"
            "  0..tokens-1, keys after RoPE), Q[n_queries][q_heads][head_dim] (decode queries\n"
            "  after RoPE) and, version 2, W[n_window][q_heads][head_dim] (the prefill's last\n"
            "  queries, after RoPE, at positions tokens-n_window..tokens-1), little-endian.\n"
            "  Without a window (version 1, or n_window 0) the triattention, snapkv and observed\n"
            "  rows are left out. --save-kv FILE writes the synthetic model as version 2.\n"
            "  --late-shift [--tokens N] [--json FILE]: HeteroCache vs static RDR (observed,\n"
            "  snapkv scorers) at 1/8 and 1/4 of F16 device bytes on a scenario with needles\n"
            "  no early query attends and a late query then does (tools/eval_hetero.c):\n"
            "  device and host bytes, needle and multi-key recall, output error, retrievals.\n");
}

#define N_SCORERS 8
#define WINDOW 64 /* prefill queries: SnapKV's observation window, observed attention's steps */

/* Scorers that need the model's queries before compression (not in a key/value file). */
static int needs_queries(int scorer)
{
    return scorer == SKV_SCORER_TRIATTENTION || scorer == SKV_SCORER_SNAPKV || scorer == SKV_SCORER_OBSERVED;
}

typedef struct cell {
    int scorer;
    const char *tiers_name;
    uint32_t tiers;
    double budget;
    double bytes_ratio, out_err, logit_err, topk, needles, multikey;
    double out_sd; /* out_err's standard deviation over the rotation seeds (0 with one) */
} cell;

/* What a cell runs on: keys and values of every layer ([layer][token][kv_head][d], at
 * positions 0..tokens-1), n_queries ordinary decode queries per layer
 * ([layer][query][q_head][d], post-RoPE, at position `tokens`) and, for the synthetic
 * model only, its needles. */
typedef struct eval_data {
    uint32_t layers, kv_heads, q_heads, head_dim, n_queries;
    uint64_t tokens;
    float *k, *v, *q;
    const synth_model *m; /* NULL for data from a file */
    /* the last n_window prefill queries of every layer [layer][n_window][q_head][d] at
     * positions tokens - n_window.. (NULL, 0: none, as in a version-1 file), the RoPE the
     * model applied, and TriAttention's statistics calibrated on those queries (mean
     * pre-RoPE query [layer][q_head][d], E|q_f| [.][.][d/2]) */
    uint32_t n_window;
    float *wq, *q_mean, *q_abs;
    skv_rope_desc rope;
    /* what does not depend on the cell, per (layer, decode query), computed by the first
     * cell that needs it: exact attention out [QH][D], and per q-head the exact q.k of
     * every token and the top-32 cut among them (memo_w NULL: too large to keep) */
    double *memo_out, *memo_w, *memo_cut;
    unsigned char *memo_have;
} eval_data;

static void free_data(eval_data *e)
{
    free(e->k), free(e->v), free(e->q), free(e->wq), free(e->q_mean), free(e->q_abs);
    free(e->memo_out), free(e->memo_w), free(e->memo_cut), free(e->memo_have);
    e->k = e->v = e->q = e->wq = e->q_mean = e->q_abs = NULL;
    e->memo_out = e->memo_w = e->memo_cut = NULL;
    e->memo_have = NULL;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* The memo of the cell-independent references (exact outputs always; exact scores when
 * they fit in 256 MB). */
static int alloc_memo(eval_data *e)
{
    const size_t rows = (size_t)e->layers * e->n_queries, scores = rows * e->q_heads * e->tokens;
    e->memo_out = malloc(rows * e->q_heads * e->head_dim * sizeof *e->memo_out);
    e->memo_cut = malloc(rows * e->q_heads * sizeof *e->memo_cut);
    e->memo_have = calloc(rows ? rows : 1, 1);
    e->memo_w = scores * sizeof(double) <= (256u << 20) ? malloc(scores * sizeof *e->memo_w) : NULL;
    return e->memo_out && e->memo_cut && e->memo_have ? 0 : -1;
}

/* Exact attention of decode query qi of layer l, and per q-head the exact q.k of every
 * token (w_all[QH][tokens], or NULL when not kept) and its top-32 cut (cut[QH]). */
static void exact_refs(const eval_data *e, uint32_t l, uint32_t qi, const float *q, const double **out,
                       const double **w_all, const double **cut, double *w_scratch, double *sorted)
{
    const uint32_t H = e->kv_heads, QH = e->q_heads, D = e->head_dim, G = QH / H;
    const uint64_t tokens = e->tokens;
    const size_t row = (size_t)l * e->n_queries + qi;
    double *o = e->memo_out + row * QH * D, *c = e->memo_cut + row * QH;
    double *w = e->memo_w ? e->memo_w + row * QH * tokens : NULL;
    const float *kl = e->k + (size_t)l * tokens * H * D, *vl = e->v + (size_t)l * tokens * H * D;
    if (!e->memo_have[row] || !w) {
        if (!e->memo_have[row])
            skv_ref_attention_decode(q, kl, vl, tokens, QH, H, D, 1.0f / sqrtf((float)D), o);
        for (uint32_t qh = 0; qh < QH; qh++) {
            double *wr = w ? w + (size_t)qh * tokens : w_scratch + (size_t)qh * tokens;
            const float *qv = q + (size_t)qh * D;
            for (uint64_t t = 0; t < tokens; t++) {
                double x = 0;
                for (uint32_t i = 0; i < D; i++)
                    x += (double)qv[i] * kl[(t * H + qh / G) * D + i];
                wr[t] = sorted[t] = x;
            }
            qsort(sorted, tokens, sizeof *sorted, cmp_desc);
            c[qh] = sorted[tokens < 32 ? tokens - 1 : 31];
        }
        e->memo_have[row] = 1;
    }
    *out = o;
    *w_all = w ? w : w_scratch;
    *cut = c;
}

static int alloc_data(eval_data *e)
{
    const size_t kv = (size_t)e->layers * e->tokens * e->kv_heads * e->head_dim;
    e->k = malloc(kv * 4), e->v = malloc(kv * 4);
    e->q = malloc((size_t)e->layers * e->n_queries * e->q_heads * e->head_dim * 4);
    if (e->k && e->v && e->q)
        return 0;
    free_data(e);
    return -1;
}

/* TriAttention's query statistics from the prefill window (skv_query_stats, per layer):
 * NULL, or why not. */
static const char *calibrate(eval_data *e)
{
    const uint32_t L = e->layers, QH = e->q_heads, D = e->head_dim, W = e->n_window;
    e->q_mean = malloc((size_t)L * QH * D * 4);
    e->q_abs = malloc((size_t)L * QH * D / 2 * 4);
    int32_t *pos = malloc((size_t)W * sizeof *pos);
    const char *why = e->q_mean && e->q_abs && pos ? NULL : "out of memory";
    for (uint32_t w = 0; !why && w < W; w++)
        pos[w] = (int32_t)(e->tokens - W + w);
    for (uint32_t l = 0; !why && l < L; l++)
        if (skv_query_stats(&e->rope, QH, D, W, e->wq + (size_t)l * W * QH * D, pos, e->q_mean + (size_t)l * QH * D,
                            e->q_abs + (size_t)l * QH * D / 2) != SKV_OK)
            why = skv_last_error();
    free(pos);
    return why;
}

/* 0, or 1 with a message naming what is wrong with the file (the library's key/value
 * file reader: include/skv/skv.h, "key/value files"). */
static int load_kv(const char *path, eval_data *e)
{
    memset(e, 0, sizeof *e);
    skv_kvfile *f = NULL;
    skv_kvfile_info in;
    skv_kvfile_info_init(&in);
    if (skv_kvfile_open(path, &f) != SKV_OK || skv_kvfile_get_info(f, &in) != SKV_OK) {
        fprintf(stderr, "skv eval: %s\n", skv_last_error());
        skv_kvfile_close(f);
        return 1;
    }
    e->layers = in.layers, e->kv_heads = in.kv_heads, e->q_heads = in.q_heads, e->head_dim = in.head_dim;
    e->tokens = in.tokens, e->n_queries = in.n_queries, e->n_window = in.n_window;
    e->rope = in.rope;
    const char *why = NULL;
    if (alloc_data(e) != 0 ||
        (e->n_window && !(e->wq = malloc((size_t)e->layers * e->n_window * e->q_heads * e->head_dim * 4))))
        why = "out of memory";
    const size_t kv = (size_t)e->tokens * e->kv_heads * e->head_dim, nq = (size_t)e->n_queries * e->q_heads * e->head_dim,
                 nw = (size_t)e->n_window * e->q_heads * e->head_dim;
    for (uint32_t l = 0; !why && l < e->layers; l++)
        if (skv_kvfile_read(f, SKV_KVFILE_KEYS, l, 0, e->tokens, e->k + l * kv) != SKV_OK ||
            skv_kvfile_read(f, SKV_KVFILE_VALUES, l, 0, e->tokens, e->v + l * kv) != SKV_OK ||
            skv_kvfile_read(f, SKV_KVFILE_QUERIES, l, 0, e->n_queries, e->q + l * nq) != SKV_OK ||
            (nw && skv_kvfile_read(f, SKV_KVFILE_WINDOW, l, 0, e->n_window, e->wq + l * nw) != SKV_OK))
            why = skv_last_error();
    skv_kvfile_close(f);
    if (!why && e->n_window)
        why = calibrate(e);
    if (!why)
        return 0;
    fprintf(stderr, "skv eval: %s: %s\n", path, why);
    free_data(e);
    return 1;
}

/* The synthetic model's keys, values and 8 ordinary queries per layer, its last WINDOW
 * prefill queries, and TriAttention's statistics calibrated on them (RoPE inverted: the
 * model's is theta 10000 over all dims in the half layout). */
static int synth_data(const synth_model *m, uint64_t tokens, eval_data *e)
{
    const uint32_t L = m->layers, QH = m->q_heads, D = m->head_dim;
    *e = (eval_data){m->layers, m->kv_heads, QH, D, 8, tokens, NULL, NULL, NULL, m, WINDOW, NULL, NULL, NULL,
                     {10000.0f, D, 0, 1.0f}, NULL, NULL, NULL, NULL};
    if (alloc_data(e) != 0)
        return -1;
    e->wq = malloc((size_t)L * WINDOW * QH * D * 4);
    if (!e->wq) {
        free_data(e);
        return -1;
    }
    const size_t kv = (size_t)tokens * m->kv_heads * D, nq = (size_t)e->n_queries * QH * D;
    for (uint32_t l = 0; l < L; l++) {
        synth_kv(m, l, 0, (uint32_t)tokens, e->k + l * kv, e->v + l * kv);
        for (uint32_t qi = 0; qi < e->n_queries; qi++)
            synth_query(m, l, tokens, -1, 100 + (uint64_t)qi, e->q + l * nq + (size_t)qi * QH * D);
        for (uint32_t w = 0; w < WINDOW; w++)
            synth_query(m, l, tokens - WINDOW + w, -1, 500, e->wq + ((size_t)l * WINDOW + w) * QH * D);
    }
    if (calibrate(e)) {
        free_data(e);
        return -1;
    }
    return 0;
}

/* Writes `e` as a version-2 key/value file of `dtype` (0 float32, 1 fp16); "-" is stdout. */
static int save_kv(const char *path, const eval_data *e, uint32_t dtype)
{
    skv_kvfile_info in;
    skv_kvfile_info_init(&in);
    in.dtype = dtype ? SKV_F16 : SKV_F32;
    in.layers = e->layers, in.kv_heads = e->kv_heads, in.q_heads = e->q_heads, in.head_dim = e->head_dim;
    in.tokens = (uint32_t)e->tokens, in.n_queries = e->n_queries, in.n_window = e->n_window;
    in.rope = e->rope;
    size_t n = 0;
    if (skv_kvfile_write_memory(&in, e->k, e->v, e->q, e->wq, NULL, 0, &n) != SKV_OK) {
        fprintf(stderr, "skv eval: %s\n", skv_last_error());
        return -1;
    }
    unsigned char *buf = malloc(n);
    int rc = buf && skv_kvfile_write_memory(&in, e->k, e->v, e->q, e->wq, buf, n, &n) == SKV_OK
                 ? tool_write_bytes(path, buf, n)
                 : -1;
    free(buf);
    return rc;
}

#define CHECK(call) TOOL_CHECK("eval", done, call)

/* A metric that is not measured (NaN: no needles in file data) is null in JSON, empty
 * in CSV and "-" in the table. */
static void add_metric(cJSON *r, const char *name, double x)
{
    if (isnan(x))
        cJSON_AddNullToObject(r, name);
    else
        cJSON_AddNumberToObject(r, name, x);
}

/* x with `precision` digits (%.*g when general, else %.*f), or `none` for NaN. */
static const char *fmt_metric(char buf[32], int precision, int general, const char *none, double x)
{
    if (isnan(x))
        return none;
    snprintf(buf, 32, general ? "%.*g" : "%.*f", precision, x);
    return buf;
}

/* One cell: a cache, the context, compression, measurements. */
static int run_cell(skv_context *ctx, const eval_data *e, uint64_t seed, cell *out)
{
    const synth_model *m = e->m;
    const uint64_t tokens = e->tokens;
    const float *kall = e->k, *vall = e->v;
    const uint32_t L = e->layers, H = e->kv_heads, QH = e->q_heads, D = e->head_dim, G = QH / H, NQ = e->n_queries;
    const uint32_t n_needles = m ? m->n_needles : 0;
    int rc = 1;
    skv_cache *c = NULL;
    float *q = malloc(QH * D * 4), *o = malloc(QH * D * 4);
    double *w = malloc((size_t)QH * tokens * sizeof *w), *sorted = malloc(tokens * sizeof *sorted);
    int32_t *held = malloc(tokens * 4), *pos = malloc(tokens * 4);
    char *is_held = malloc(tokens);
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = 64;
    d.device_budget_bytes = 3 * ((tokens + 63) / 64 + 2) * L * H * 64 * (4ull * D + 4);
    d.tiers = out->tiers;
    d.scorer = (skv_scorer)out->scorer;
    d.score_window = 1024;
    d.retention = SKV_RETENTION_RDR;
    d.budget_ratio = (float)out->budget;
    d.slack = 1u << 30;
    d.rope = e->rope;
    d.query_mean = e->q_mean;
    d.query_abs = e->q_abs;
    d.rotation_seed = seed;
    const size_t cap = tokens;
    float *lg = malloc((size_t)QH * cap * sizeof *lg);
    size_t *counts = malloc(H * sizeof *counts);
    if (!q || !o || !w || !sorted || !held || !pos || !is_held || !lg || !counts) {
        fprintf(stderr, "skv eval: out of memory\n");
        goto done;
    }
    CHECK(skv_cache_create(ctx, &d, &c));
    skv_seq_id s;
    CHECK(skv_seq_create(c, &s));
    for (uint64_t t = 0; t < tokens; t++)
        pos[t] = (int32_t)t;
    for (uint32_t l = 0; l < L; l++)
        CHECK(skv_append(c, s, l, (uint32_t)tokens, SKV_F32, kall + (size_t)l * tokens * H * D,
                         vall + (size_t)l * tokens * H * D, pos));
    /* what the query scorers see before compression: the prefill's last queries (and
     * RDR's distortion model, their energy, whatever the scorer) */
    const uint32_t W = e->n_window;
    for (uint32_t l = 0; l < L && W; l++)
        CHECK(skv_seq_observe_window(c, s, l, W, SKV_F32, e->wq + (size_t)l * W * QH * D, pos + tokens - W));
    for (uint32_t l = 0; l < L && out->scorer == SKV_SCORER_OBSERVED; l++)
        for (uint32_t wi = 0; wi < W; wi++)
            CHECK(skv_attention_decode(c, l, &s, 1, SKV_F32, e->wq + ((size_t)l * W + wi) * QH * D,
                                       1.0f / sqrtf((float)D), SKV_F32, o));
    CHECK(skv_compress(c, s));
    skv_cache_stats st = {.struct_size = sizeof st};
    CHECK(skv_cache_get_stats(c, &st));
    out->bytes_ratio = st.bytes_ratio;
    const float scale = 1.0f / sqrtf((float)D);
    double err = 0, topk = 0, lerr = 0;
    int n_err = 0, n_topk = 0, found = 0, found_mk = 0;
    for (uint32_t l = 0; l < L; l++) {
        for (uint32_t qi = 0; qi < NQ + n_needles; qi++) {
            int needle = qi < NQ ? -1 : (int)(qi - NQ);
            if (needle >= 0)
                synth_query(m, l, tokens, needle, 100 + (uint64_t)qi, q);
            else
                memcpy(q, e->q + ((size_t)l * NQ + qi) * QH * D, (size_t)QH * D * 4);
            CHECK(skv_attention_decode(c, l, &s, 1, SKV_F32, q, scale, SKV_F32, o));
            if (needle >= 0) {
                const size_t per = (size_t)m->layers * H * D;
                double cs = 0;
                for (uint32_t qh = 0; qh < QH; qh++) {
                    const float *v = m->nvalue + needle * per + ((size_t)l * H + qh / G) * D;
                    double dot = 0, no = 0, nv = 0;
                    for (uint32_t i = 0; i < D; i++) {
                        dot += (double)o[qh * D + i] * v[i];
                        no += (double)o[qh * D + i] * o[qh * D + i];
                        nv += (double)v[i] * v[i];
                    }
                    cs += dot / sqrt(no * nv + 1e-30) / QH;
                }
                if ((uint32_t)needle < m->n_needles - m->n_multikey)
                    found += cs >= 0.9;
                else
                    found_mk += cs >= 0.9;
                continue;
            }
            const double *ref, *w_all, *cut;
            exact_refs(e, l, qi, q, &ref, &w_all, &cut, w, sorted);
            err += skv_ref_rel_l2(ref, o, QH * D);
            n_err++;
            /* logits of the held tokens as decode computes them, against the exact ones */
            CHECK(skv_attention_logits(c, l, s, SKV_F32, q, scale, lg, cap, counts));
            double le = 0, ln = 0;
            /* top-32 recall per kv-head, over its q-heads: exact attention weights */
            for (uint32_t h = 0; h < H; h++) {
                size_t cnt = 0;
                CHECK(skv_seq_positions(c, s, l, h, held, tokens, &cnt));
                memset(is_held, 0, tokens);
                for (size_t i = 0; i < cnt; i++)
                    if (held[i] >= 0 && (uint64_t)held[i] < tokens)
                        is_held[held[i]] = 1;
                for (uint32_t g = 0; g < G; g++) {
                    const double *wq = w_all + (size_t)(h * G + g) * tokens, cq = cut[h * G + g];
                    for (size_t i = 0; i < cnt && i < counts[h]; i++) {
                        if (held[i] < 0 || (uint64_t)held[i] >= tokens)
                            continue;
                        double exact = wq[held[i]] * scale, dl = lg[(size_t)(h * G + g) * cap + i] - exact;
                        le += dl * dl;
                        ln += exact * exact;
                    }
                    int kept = 0, total = 0;
                    for (uint64_t t = 0; t < tokens; t++)
                        if (wq[t] >= cq) {
                            total++;
                            kept += is_held[t];
                        }
                    topk += (double)kept / total;
                    n_topk++;
                }
            }
            lerr += sqrt(le / (ln > 0 ? ln : 1));
        }
    }
    out->out_err = err / n_err;
    out->logit_err = lerr / n_err;
    out->topk = topk / n_topk;
    out->needles = n_needles > (m ? m->n_multikey : 0) ? (double)found / (L * (n_needles - m->n_multikey)) : NAN;
    out->multikey = m && m->n_multikey ? (double)found_mk / (L * m->n_multikey) : NAN;
    rc = 0;
done:
    skv_cache_destroy(c);
    free(q), free(o), free(w), free(sorted), free(held), free(pos), free(is_held), free(lg), free(counts);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--late-shift") == 0)
            return eval_late_shift(argc, argv);
    uint64_t tokens = 4096;
    int tokens_set = 0;
    uint32_t save_dtype = 0, seeds = 1;
    const char *json = NULL, *csv = NULL, *svg = NULL, *device = NULL, *kv_file = NULL, *save_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return tool_usage_error(usage_eval, "eval: '%s' needs a value or is unknown", a);
        if (strcmp(a, "--tokens") == 0) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(v, &end, 10);
            if (errno || *end || n < 1024 || n > (1u << 20))
                return tool_usage_error(usage_eval, "eval: --tokens must be in 1024..1048576");
            tokens = n;
            tokens_set = 1;
        } else if (strcmp(a, "--kv") == 0) {
            kv_file = v;
        } else if (strcmp(a, "--save-kv") == 0) {
            save_file = v;
        } else if (strcmp(a, "--save-dtype") == 0) {
            if (strcmp(v, "f32") != 0 && strcmp(v, "f16") != 0)
                return tool_usage_error(usage_eval, "eval: --save-dtype must be f32 or f16");
            save_dtype = strcmp(v, "f16") == 0;
        } else if (strcmp(a, "--json") == 0) {
            json = v;
        } else if (strcmp(a, "--csv") == 0) {
            csv = v;
        } else if (strcmp(a, "--svg") == 0) {
            svg = v;
        } else if (strcmp(a, "--device") == 0) {
            device = v;
        } else if (strcmp(a, "--seeds") == 0) {
            char *end;
            errno = 0;
            unsigned long n = strtoul(v, &end, 10);
            if (errno || *end || n < 1 || n > 64)
                return tool_usage_error(usage_eval, "eval: --seeds must be in 1..64");
            seeds = (uint32_t)n;
        } else {
            return tool_usage_error(usage_eval, "eval: unknown option '%s'", a);
        }
        i++;
    }
    if (kv_file && (tokens_set || save_file))
        return tool_usage_error(usage_eval, "eval: --kv takes its sizes from the file (no --tokens, --save-kv)");
    const uint32_t L = 2, H = 4, QH = 16, D = 128;
    const double budgets[4] = {0.5, 0.25, 0.125, 0.0625};
    const struct {
        const char *name;
        uint32_t tiers;
    } sets[3] = {{"drop", 0x1}, {"ada", (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4)}, {"rdr", 0xF}};
    int rc = 1;
    synth_model m = {0}; /* only for synthetic data */
    eval_data e = {0};
    if (kv_file) {
        if (load_kv(kv_file, &e) != 0)
            return 1;
        tokens = e.tokens;
    } else if (synth_init(&m, L, H, QH, D, tokens, 4, 2, 7) != 0 || synth_data(&m, tokens, &e) != 0) {
        fprintf(stderr, "skv eval: out of memory\n");
        synth_free(&m);
        return 1;
    }
    if (save_file) {
        rc = save_kv(save_file, &e, save_dtype) != 0;
        if (rc)
            fprintf(stderr, "skv eval: cannot write %s\n", save_file);
        else
            printf("skv eval: wrote the synthetic model's keys, values and queries (%llu tokens) to %s\n",
                   (unsigned long long)tokens, save_file);
        free_data(&e);
        synth_free(&m);
        return rc;
    }
    skv_context *ctx = NULL;
    cell *cells = calloc(N_SCORERS * 4 * 3, sizeof *cells);
    cJSON *root = cJSON_CreateObject();
    if (!cells || !root || alloc_memo(&e) != 0) {
        fprintf(stderr, "skv eval: out of memory\n");
        goto done;
    }
    skv_device_profile prof;
    if (tool_open_context("eval", device, 0, &ctx, &prof) != SKV_OK)
        goto done;
    if (kv_file)
        printf("skv eval — %s (%s); %s: %u layers, %u kv-heads, %u q-heads, head_dim %u, %llu tokens, %u queries\n\n",
               prof.name, prof.platform, kv_file, e.layers, e.kv_heads, e.q_heads, e.head_dim,
               (unsigned long long)tokens, e.n_queries);
    else
        printf("skv eval — %s (%s); synthetic model, %llu tokens\n\n", prof.name, prof.platform,
               (unsigned long long)tokens);
    printf("%-18s %-5s %7s %8s %11s %9s %13s %6s %7s %8s\n", "scorer", "tiers", "budget", "bytes", "out_rel_err",
           "sd", "logit_rel_err", "top32", "needle", "multikey");
    int n = 0, n_scorers = 0;
    for (int sc = 1; sc <= N_SCORERS; sc++)
        n_scorers += e.wq || !needs_queries(sc);
    for (int sc = 1; sc <= N_SCORERS; sc++) {
        if (!e.wq && needs_queries(sc))
            continue; /* a key/value file has no prefill queries */
        for (int si = 0; si < 3; si++)
            for (int bi = 0; bi < 4; bi++) {
                cell *c = &cells[n++];
                *c = (cell){sc, sets[si].name, sets[si].tiers, budgets[bi], 0, 0, 0, 0, 0, 0, 0};
                double sq = 0; /* the mean of every metric over the seeds, out_err's spread */
                for (uint32_t seed = 0; seed < seeds; seed++) {
                    tool_progress("eval %d/%d: %s %s %.4g, seed %u", n, n_scorers * 12, tool_scorer_names[sc],
                                  sets[si].name, budgets[bi], seed);
                    cell one = *c;
                    if (run_cell(ctx, &e, seed, &one) != 0)
                        goto done;
                    c->bytes_ratio += one.bytes_ratio / seeds;
                    c->out_err += one.out_err / seeds;
                    c->logit_err += one.logit_err / seeds;
                    c->topk += one.topk / seeds;
                    c->needles += one.needles / seeds;
                    c->multikey += one.multikey / seeds;
                    sq += one.out_err * one.out_err;
                }
                const double var = sq / seeds - c->out_err * c->out_err;
                c->out_sd = seeds > 1 && var > 0 ? sqrt(var * seeds / (seeds - 1)) : 0;
                tool_progress("");
                char nb[32], mb[32];
                printf("%-18s %-5s %7.4f %8.4f %11.3e %9.1e %13.3e %6.3f %7s %8s\n", tool_scorer_names[sc], c->tiers_name,
                       c->budget, c->bytes_ratio, c->out_err, c->out_sd, c->logit_err, c->topk,
                       fmt_metric(nb, 2, 0, "-", c->needles), fmt_metric(mb, 2, 0, "-", c->multikey));
                fflush(stdout);
            }
    }
    char dev[2 * SKV_NAME_MAX + 8];
    snprintf(dev, sizeof dev, "%s (%s)", prof.name, prof.platform);
    cJSON_AddStringToObject(root, "device", dev);
    cJSON_AddStringToObject(root, "version", skv_version_string());
    cJSON_AddNumberToObject(root, "tokens", (double)tokens);
    cJSON *results = cJSON_AddArrayToObject(root, "results");
    size_t csv_len = 4096 + (size_t)n * 160;
    char *csv_text = malloc(csv_len);
    size_t used = 0;
    if (csv_text)
        used = (size_t)snprintf(csv_text, csv_len,
                                "scorer,tiers,budget,bytes_ratio,out_rel_err,logit_rel_err,topk_recall,needle_recall,"
                                "multikey_recall,out_rel_err_sd\n");
    for (int i = 0; i < n; i++) {
        const cell *c = &cells[i];
        char nb[32], mb[32];
        cJSON *r = cJSON_CreateObject();
        cJSON_AddStringToObject(r, "scorer", tool_scorer_names[c->scorer]);
        cJSON_AddStringToObject(r, "tiers", c->tiers_name);
        cJSON_AddNumberToObject(r, "budget", c->budget);
        cJSON_AddNumberToObject(r, "bytes_ratio", c->bytes_ratio);
        cJSON_AddNumberToObject(r, "out_rel_err", c->out_err);
        cJSON_AddNumberToObject(r, "out_rel_err_sd", c->out_sd);
        cJSON_AddNumberToObject(r, "logit_rel_err", c->logit_err);
        cJSON_AddNumberToObject(r, "topk_recall", c->topk);
        add_metric(r, "needle_recall", c->needles);
        add_metric(r, "multikey_recall", c->multikey);
        cJSON_AddItemToArray(results, r);
        if (csv_text && used < csv_len)
            used += (size_t)snprintf(csv_text + used, csv_len - used, "%s,%s,%g,%.6g,%.6g,%.6g,%.6g,%s,%s,%.6g\n",
                                     tool_scorer_names[c->scorer], c->tiers_name, c->budget, c->bytes_ratio, c->out_err,
                                     c->logit_err, c->topk, fmt_metric(nb, 6, 1, "", c->needles),
                                     fmt_metric(mb, 6, 1, "", c->multikey), c->out_sd);
    }
    rc = 0;
    if (json) {
        char *text = cJSON_Print(root);
        if (!text || tool_write_file(json, text) != 0) {
            fprintf(stderr, "skv eval: cannot write %s\n", json);
            rc = 1;
        }
        free(text);
    }
    if (csv && (!csv_text || tool_write_file(csv, csv_text) != 0)) {
        fprintf(stderr, "skv eval: cannot write %s\n", csv);
        rc = 1;
    }
    free(csv_text);
    if (svg) { /* a line per (scorer, tier set) over the budgets */
        enum { M = N_SCORERS * 3 };
        const int n_methods = n / 4;
        svg_series err_s[M], rec_s[M];
        double xs[M][4], ye[M][4], yr[M][4];
        char names[M][40];
        for (int mth = 0; mth < n_methods; mth++) {
            for (int bi = 0; bi < 4; bi++) {
                const cell *c = &cells[mth * 4 + bi];
                xs[mth][bi] = c->bytes_ratio;
                ye[mth][bi] = c->out_err;
                yr[mth][bi] = c->topk;
            }
            snprintf(names[mth], sizeof names[mth], "%s/%s", tool_scorer_names[cells[mth * 4].scorer],
                     cells[mth * 4].tiers_name);
            /* colour by scorer, line style by tier set (rdr solid, ada dotted, drop dashed) */
            int color = mth / 3, dash = mth % 3 == 0 ? 1 : mth % 3 == 1 ? 2 : 0;
            err_s[mth] = (svg_series){names[mth], xs[mth], ye[mth], 4, color, dash};
            rec_s[mth] = (svg_series){names[mth], xs[mth], yr[mth], 4, color, dash};
        }
        svg_panel panels[2] = {
            {"decode output error vs bytes", "bytes / F16 bytes", "relative L2 error", 1, 1, err_s, n_methods},
            {"top-32 recall vs bytes", "bytes / F16 bytes", "recall", 1, 0, rec_s, n_methods}};
        char heading[2 * SKV_NAME_MAX + 64];
        snprintf(heading, sizeof heading, "skv eval %s, %s, %llu tokens", skv_version_string(), dev,
                 (unsigned long long)tokens);
        char *text = svg_chart(heading, panels, 2);
        if (!text || tool_write_file(svg, text) != 0) {
            fprintf(stderr, "skv eval: cannot write %s\n", svg);
            rc = 1;
        }
        free(text);
    }
done:
    cJSON_Delete(root);
    free(cells);
    free_data(&e);
    skv_context_destroy(ctx);
    synth_free(&m);
    return rc;
}
