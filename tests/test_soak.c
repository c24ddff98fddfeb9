/* Soak test (issue 17, item 3): a randomized sequence of operations on two caches of one
 * context — an F16 cache compressed by RDR (keydiff; drop only) and an ADA cache (F16,
 * A3V4, A2V2; explicit quantisation, appends from host arrays and from cl_mem) — with
 * several sequences each, against a model of what each sequence holds: per sequence
 * and layer every appended position with its (fp16) K and V; per (layer, kv-head) the
 * positions held, their tier and whether their page is in host memory.
 *
 * After every operation: the touched sequences' holdings are read back
 * (skv_seq_positions, tiers and page places from the page lists) and held to what the
 * operation must do (an append adds its tokens at F16 unless RDR ran; RDR keeps a subset
 * with the sinks and the recent window, within its budget; fork copies; quantise moves
 * exactly the full F16 pages of its range; offload and fetch exactly the full pages of
 * theirs; the rest change nothing); the page pools' reference counts equal the
 * references of the live sequences' page lists (pages in use, free and allocated agree
 * with skv_cache_get_stats); lengths equal the model's. Decode attention (batches of
 * several sequences, f32 or fp16 queries and outputs) is compared with a dense attention
 * computed here in double over the positions held on the device, from the model's K/V:
 * as appended for F16 tokens, and for ADA tokens the keys and values the C references
 * (src/skv_ref.h) encode and decode; relative L2 within 1e-4 (1e-3 with fp16 outputs).
 * Logits (every token, every tier) and scores (keydiff, knorm) likewise.
 *
 * Faults: an operation runs with probability 1/8 with its k-th host allocation failing
 * (the context's counting allocator) and with probability 1/8 with its i-th wrapped
 * OpenCL call failing (tests/cl_fault_wrap.h), k and i drawn below the most that
 * operation has made. A faulted operation must fail, and the sequence must come out
 * exactly as it was (pages in use and sequences too), with three exceptions by design,
 * then checked as successes: a compression an append runs (a failure leaves the append
 * done), RDR's kept scores (a failed allocation only means scoring every token next
 * time), and a kernel's first load (a failed program-cache read falls back to a build).
 *
 * Usage: test_soak [--seed N] [--ops M] [--quiet] [--rdr-tiers] [--deferred]. Defaults:
 * seed 1, 10,000 operations (the CI run). --rdr-tiers: the RDR cache has A3V4 and A2V2
 * too (RDR transcodes). --deferred: skv_append_cl on the RDR cache too, so compressions
 * are deferred to later append, decode and logits calls on any sequence; whatever
 * changed then must be a compression. The seed is printed at the start and with any failure, with the step and
 * the operation, for replay. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <execinfo.h>
#include <time.h>

#include "test_util.h"
#include "cache_internal.h"
#include "cl_fault_wrap.h"
#include "skv/skv_cl.h"

enum { L = 2, QH = 4, H = 2, D = 64, P = 16, GROUP = QH / H, MAX_SEQ = 4, MAX_LEN = 320 };
#define SCALE 0.125f
#define N_SINK 4u
#define RECENT 16u
#define SLACK 32u
#define RATIO 0.5f
#define TOL_F16 1e-4 /* decode over F16 tokens (fp16 values, held exactly): float accumulation only */
/* by the coarsest tier held (all alike now that ADA tokens are decoded by the references) */
static const double tol_tier[SKV_TIER_COUNT] = {TOL_F16, TOL_F16, TOL_F16, TOL_F16};

typedef struct layer_model {
    uint32_t n;               /* appended */
    int32_t pos[MAX_LEN];     /* strictly increasing */
    float k[MAX_LEN][H][D];   /* fp16 values as float */
    float v[MAX_LEN][H][D];
    uint8_t via[MAX_LEN][H]; /* the ADA tiers each token has been held in (bit per tier): RDR
                              * transcodes from one to the next */
} layer_model;

typedef struct held {
    uint32_t n;
    int32_t pos[MAX_LEN];
    uint8_t tier[MAX_LEN];
    uint8_t host[MAX_LEN];
    uint32_t count[SKV_TIER_COUNT]; /* tokens per tier list */
} held;

typedef struct seq_model {
    int live;
    skv_seq_id id;
    layer_model lay[L];
    held hd[L][H];
    /* RDR: an append's compression of the layer could not run (pages in host memory: it
     * does not run then, and the layer may exceed its budget until one runs) */
    int rdr_blocked[L];
} seq_model;

typedef struct cache_model {
    const char *name;
    skv_cache *c;
    int rdr; /* 1: RDR (keydiff); 0: no retention (knorm) */
    int ada; /* ADA tiers A3V4 and A2V2 besides F16 */
    seq_model *seq[MAX_SEQ];
} cache_model;

enum {
    OP_APPEND, OP_APPEND_CL, OP_FORK, OP_QUANTIZE, OP_COMPRESS, OP_OFFLOAD, OP_FETCH, OP_DECODE,
    OP_LOGITS, OP_SCORES, OP_FREE, OP_CREATE, OP_COUNT
};
static const char *const op_names[OP_COUNT] = {"append", "append_cl", "fork", "quantize", "compress", "offload",
                                                "fetch", "decode", "logits", "scores", "free", "create"};

static skv_context *ctx;
static counting_allocator counter;
static void *soak_alloc(void *user, size_t size)
{
    void *p = counting_alloc(user, size);
    if (!p && getenv("SOAK_BACKTRACE")) { /* where an injected failure struck, for debugging */
        void *frames[32];
        backtrace_symbols_fd(frames, backtrace(frames, 32), 2);
    }
    return p;
}
static skv_allocator counting = {soak_alloc, counting_free, &counter};
static void soak_cl_backtrace(void)
{
    void *frames[32];
    backtrace_symbols_fd(frames, backtrace(frames, 32), 2);
}
static cache_model caches[2];
static uint64_t seed = 1, step;
static const char *cur_op = "setup";
static char cur_detail[256];
static int quiet, rdr_tiers, deferred;
static test_rng rng;

/* the most allocations and OpenCL calls each operation has made (per cache) */
static long max_allocs[2][OP_COUNT], max_cl[2][OP_COUNT];
static uint64_t n_ops[OP_COUNT], n_faulted[OP_COUNT], n_absorbed[OP_COUNT], n_refused[OP_COUNT];
static double worst_decode[SKV_TIER_COUNT], worst_decode_f16out, worst_logit_f16, worst_logit_ada, worst_score,
    worst_score_ada;
static int out_f16; /* the decode checked wrote fp16 outputs */

static void soak_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void soak_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "SOAK FAILURE: seed %llu, step %llu, op %s (%s): ", (unsigned long long)seed,
            (unsigned long long)step, cur_op, cur_detail);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n  replay: test_soak --seed %llu --ops %llu\n", (unsigned long long)seed,
            (unsigned long long)step + 1);
    exit(1);
}

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            soak_fail(__VA_ARGS__);                                                                                    \
    } while (0)
#define CHECK_OK(expr)                                                                                                 \
    do {                                                                                                               \
        skv_status st_ = (expr);                                                                                       \
        CHECK(st_ == SKV_OK, "%s = %s: %s", #expr, skv_status_str(st_), skv_last_error());                           \
    } while (0)

static uint32_t below(uint32_t n) { return n ? rng_u32(&rng) % n : 0; }
static float f16(float x) { return skv_ref_f16_to_f32(skv_ref_f32_to_f16(x)); }

/* ---- reading back what the cache holds ------------------------------------------------ */

static skvi_seq *internal(const cache_model *cm, const seq_model *sm) { return &cm->c->seqs[sm->id]; }
static int find_pos(const layer_model *lm, int32_t p);
static void absorb(cache_model *cm, const seq_model *except);

static void read_held(cache_model *cm, seq_model *sm, held out[L][H])
{
    skvi_seq *s = internal(cm, sm);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            held *o = &out[l][h];
            size_t count = 0;
            CHECK_OK(skv_seq_positions(cm->c, sm->id, l, h, o->pos, MAX_LEN, &count));
            CHECK(count <= MAX_LEN, "%s: seq %u layer %u head %u holds %zu > %d", cm->name, sm->id, l, h, count,
                  MAX_LEN);
            o->n = 0;
            for (int t = 0; t < SKV_TIER_COUNT; t++) {
                const skvi_page_list *pl = skvi_seq_list(cm->c, s, l, h, (skv_tier)t);
                CHECK(pl->n == (pl->tokens + P - 1) / P, "%s: list (%u, %u, tier %d) has %u pages for %u tokens",
                      cm->name, l, h, t, pl->n, pl->tokens);
                o->count[t] = pl->tokens;
                for (uint32_t k = 0; k < pl->tokens; k++, o->n++) {
                    o->tier[o->n] = (uint8_t)t;
                    o->host[o->n] = (pl->ids[k / P] & SKVI_HOST_BIT) != 0;
                }
            }
            CHECK(o->n == count, "%s: positions count %zu, lists hold %u", cm->name, count, o->n);
            for (uint32_t i = 0; i < o->n; i++) {
                int j = find_pos(&sm->lay[l], o->pos[i]);
                if (j >= 0 && o->tier[i] != SKV_TIER_F16)
                    sm->lay[l].via[j][h] |= (uint8_t)(1u << o->tier[i]);
            }
        }
}

/* index in the layer model of position p, or -1 */
static int find_pos(const layer_model *lm, int32_t p)
{
    uint32_t lo = 0, hi = lm->n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (lm->pos[mid] < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < lm->n && lm->pos[lo] == p ? (int)lo : -1;
}

static int held_equal(const held *a, const held *b)
{
    if (a->n != b->n || memcmp(a->count, b->count, sizeof a->count) != 0)
        return 0;
    return memcmp(a->pos, b->pos, a->n * sizeof a->pos[0]) == 0 && memcmp(a->tier, b->tier, a->n) == 0 &&
           memcmp(a->host, b->host, a->n) == 0;
}

static void check_unchanged(cache_model *cm, seq_model *sm, const char *why)
{
    static held now[L][H];
    read_held(cm, sm, now);
    for (uint32_t l = 0; l < L; l++) {
        uint64_t len = 0;
        CHECK_OK(skv_seq_length(cm->c, sm->id, l, &len));
        CHECK(len == sm->lay[l].n, "%s: %s: seq %u layer %u length %llu, model %u", cm->name, why, sm->id, l,
              (unsigned long long)len, sm->lay[l].n);
        for (uint32_t h = 0; h < H; h++)
            CHECK(held_equal(&now[l][h], &sm->hd[l][h]),
                  "%s: %s: seq %u (layer %u, head %u) changed: %u tokens held -> %u", cm->name, why, sm->id, l, h,
                  sm->hd[l][h].n, now[l][h].n);
    }
}

static double page_bytes(int t) { return (double)skvi_tier_page_bytes((skv_tier)t, D, P); }

/* Bytes of the pages a (layer, kv-head) holds. */
static double held_bytes(const held *now)
{
    double b = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        b += (double)((now->count[t] + P - 1) / P) * page_bytes(t);
    return b;
}

/* RDR's budget of a (layer, kv-head) in bytes: budget_ratio of the F16 bytes of every
 * token appended, or the floor of its protected tokens (at most the sinks and the
 * recent window, in whichever tiers hold them) when that is more. */
static double rdr_limit(const layer_model *lm, const held *now)
{
    double budget = RATIO * lm->n * page_bytes(SKV_TIER_F16) / P, floor = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        uint32_t n = now->count[t] < N_SINK + RECENT ? now->count[t] : N_SINK + RECENT;
        floor += (double)((n + P - 1) / P) * page_bytes(t);
    }
    return budget > floor ? budget : floor;
}

/* What any holding must satisfy: positions appended, each once, the newest RECENT held
 * (RDR: the recent window; without retention every token), sinks kept once held. */
static void check_holding(const cache_model *cm, const seq_model *sm, uint32_t l, uint32_t h, const held *now)
{
    const layer_model *lm = &sm->lay[l];
    static uint8_t seen[MAX_LEN];
    memset(seen, 0, sizeof seen);
    for (uint32_t i = 0; i < now->n; i++) {
        int j = find_pos(lm, now->pos[i]);
        CHECK(j >= 0, "%s: seq %u (%u, %u) holds position %d, never appended", cm->name, sm->id, l, h, now->pos[i]);
        CHECK(!seen[j], "%s: seq %u (%u, %u) holds position %d twice", cm->name, sm->id, l, h, now->pos[i]);
        seen[j] = 1;
    }
    /* RDR's recent window is by position: those within RECENT of the last appended + 1 */
    for (uint32_t j = 0; j < lm->n; j++)
        if (!cm->rdr || lm->pos[j] >= lm->pos[lm->n - 1] + 1 - (int32_t)RECENT)
            CHECK(seen[j], "%s: seq %u (%u, %u) lost position %d (last appended %d)", cm->name, sm->id, l, h,
                  lm->pos[j], lm->pos[lm->n - 1]);
    if (cm->rdr && !sm->rdr_blocked[l]) { /* the budget, loosely: what appends may add between compressions */
        uint32_t host = 0;
        for (uint32_t i = 0; i < now->n; i++)
            host += now->host[i];
        double slack = (double)(P + RECENT + SLACK + 48) * page_bytes(SKV_TIER_F16) / P + 3 * page_bytes(SKV_TIER_A4V8);
        CHECK(held_bytes(now) <= rdr_limit(lm, now) + slack,
              "%s: seq %u (%u, %u) holds %u of %u appended in %.0f bytes, budget %.0f (%u in host pages)", cm->name,
              sm->id, l, h, now->n, lm->n, held_bytes(now), rdr_limit(lm, now), host);
    }
}

/* Right after RDR ran on a layer: its pages within the budget (the sinks and the recent
 * window are a floor under it). */
static void check_budget(const cache_model *cm, const seq_model *sm, uint32_t l, const held *now)
{
    CHECK(held_bytes(now) <= rdr_limit(&sm->lay[l], now) + 1e-6,
          "%s: seq %u layer %u: %u tokens in %.0f bytes after RDR, budget %.0f", cm->name, sm->id, l, now->n,
          held_bytes(now), rdr_limit(&sm->lay[l], now));
}

/* The page pools against the page lists of the live sequences. */
static void check_pools(cache_model *cm)
{
    skv_cache *c = cm->c;
    skv_cache_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_cache_get_stats(c, &st));
    uint32_t live = 0;
    for (int i = 0; i < MAX_SEQ; i++)
        live += cm->seq[i] && cm->seq[i]->live;
    uint32_t lib_live = 0;
    for (uint32_t i = 0; i < c->seq_cap; i++)
        lib_live += c->seqs[i].live != 0;
    CHECK(st.sequences == live && lib_live == live, "%s: %u live sequences, stats %u, model %u", cm->name, lib_live,
          st.sequences, live);
    uint64_t tokens[SKV_TIER_COUNT] = {0};
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++) {
            const skvi_pool *p = &c->pools[t][m];
            uint64_t total = 0;
            for (uint32_t k = 0; k < p->n_chunks; k++)
                total += p->chunk_pages[k];
            static uint32_t refs[1 << 16];
            CHECK(total <= (1 << 16), "%s: pool of %llu pages", cm->name, (unsigned long long)total);
            memset(refs, 0, total * sizeof refs[0]);
            for (uint32_t i = 0; i < c->seq_cap; i++) {
                const skvi_seq *s = &c->seqs[i];
                if (!s->live)
                    continue;
                for (uint32_t lh = 0; lh < L * H; lh++) {
                    const skvi_page_list *pl = &s->lists[lh * SKV_TIER_COUNT + t];
                    if (m == 0)
                        tokens[t] += pl->tokens;
                    for (uint32_t j = 0; j < pl->n; j++) {
                        uint32_t id = pl->ids[j];
                        if (((id & SKVI_HOST_BIT) != 0) != (m == SKV_MEM_HOST))
                            continue;
                        id &= ~SKVI_HOST_BIT;
                        CHECK(id < total, "%s: seq %u references page %u of a %s pool of %llu", cm->name, i, id,
                              m ? "host" : "device", (unsigned long long)total);
                        refs[id]++;
                    }
                }
            }
            uint64_t used = 0;
            for (uint64_t id = 0; id < total; id++) {
                CHECK(refs[id] == p->refs[id], "%s: tier %d %s page %llu: %u references, count %u", cm->name, t,
                      m ? "host" : "device", (unsigned long long)id, refs[id], p->refs[id]);
                used += refs[id] != 0;
            }
            CHECK(used == p->used && used == st.pools[t][m].pages_used && p->n_free == total - used &&
                      st.pools[t][m].pages_allocated == total,
                  "%s: tier %d %s: %llu pages referenced, pool used %llu, stats used %llu, free %u, allocated %llu "
                  "(stats %llu)",
                  cm->name, t, m ? "host" : "device", (unsigned long long)used, (unsigned long long)p->used,
                  (unsigned long long)st.pools[t][m].pages_used, p->n_free, (unsigned long long)total,
                  (unsigned long long)st.pools[t][m].pages_allocated);
        }
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        CHECK(tokens[t] == st.tokens[t], "%s: tier %d holds %llu tokens, stats %llu", cm->name, t,
              (unsigned long long)tokens[t], (unsigned long long)st.tokens[t]);
}

/* ---- references ---------------------------------------------------------------------- */

/* The K and V of token j of (layer, head) as the cache holds them in `tier`: F16 as
 * appended; ADA as the C references encode and decode them (the cache's rotation seed
 * is the built-in 0; the device's codes equal the references' bit for bit,
 * test_ada_kernels). */
static void token_kv(const cache_model *cm, uint32_t l, uint32_t h, const layer_model *lm, int j, int tier, float *k,
                     float *v)
{
    if (tier == SKV_TIER_F16) {
        memcpy(k, lm->k[j][h], D * sizeof(float));
        memcpy(v, lm->v[j][h], D * sizeof(float));
        return;
    }
    int8_t signs[D];
    uint32_t words[D];
    uint16_t norm;
    uint8_t codes[2 * D + 64];
    skv_ref_ada_signs_seeded(0, l, h, D, signs);
    memcpy(k, lm->k[j][h], D * sizeof(float));
    memcpy(v, lm->v[j][h], D * sizeof(float));
    for (int u = SKV_TIER_F16 + 1; u <= tier; u++) { /* each tier it went through, in order */
        if (u != tier && !(lm->via[j][h] & (1u << u)))
            continue;
        const skv_ref_ada_params *p = &cm->c->ada[u];
        const skvi_tier_desc *t = &skvi_tiers[u];
        skv_ref_ada_encode_key(p, signs, k, words, &norm);
        skv_ref_ada_decode_key(p, signs, words, norm, k);
        skv_ref_value_encode(v, D, t->value_bits, t->value_group, codes);
        skv_ref_value_decode(codes, D, t->value_bits, t->value_group, v);
    }
}

/* Decode of one sequence over what (layer) holds on the device, dense, in double; the
 * relative L2 error of `got` against it; *coarsest: the coarsest tier among those tokens. */
static double decode_error(const cache_model *cm, const seq_model *sm, uint32_t l, const float *q, const float *got,
                           int *coarsest)
{
    const layer_model *lm = &sm->lay[l];
    static double ref[QH * D];
    static double w[MAX_LEN];
    static float kd[MAX_LEN][D], vd[MAX_LEN][D];
    *coarsest = SKV_TIER_F16;
    for (uint32_t qh = 0; qh < QH; qh++) {
        uint32_t h = qh / GROUP;
        const held *hd = &sm->hd[l][h];
        double mx = -INFINITY, sum = 0;
        for (uint32_t i = 0; i < hd->n; i++) {
            w[i] = -INFINITY;
            if (hd->host[i])
                continue;
            *coarsest = hd->tier[i] > *coarsest ? hd->tier[i] : *coarsest;
            float *k = kd[i], *v = vd[i];
            token_kv(cm, l, h, lm, find_pos(lm, hd->pos[i]), hd->tier[i], k, v);
            double dot = 0;
            for (uint32_t d = 0; d < D; d++)
                dot += (double)q[qh * D + d] * k[d];
            w[i] = dot * SCALE;
            mx = w[i] > mx ? w[i] : mx;
        }
        for (uint32_t d = 0; d < D; d++)
            ref[qh * D + d] = 0;
        for (uint32_t i = 0; i < hd->n; i++) {
            if (hd->host[i])
                continue;
            double e = exp(w[i] - mx);
            sum += e;
            const float *v = vd[i];
            for (uint32_t d = 0; d < D; d++)
                ref[qh * D + d] += e * v[d];
        }
        for (uint32_t d = 0; d < D; d++)
            ref[qh * D + d] /= sum;
    }
    return skv_ref_rel_l2(ref, got, QH * D);
}

/* Whether every kv-head of (layer) holds a token on the device (decode needs one). */
static int decodable(const seq_model *sm, uint32_t l)
{
    for (uint32_t h = 0; h < H; h++) {
        int any = 0;
        for (uint32_t i = 0; i < sm->hd[l][h].n && !any; i++)
            any = !sm->hd[l][h].host[i];
        if (!any)
            return 0;
    }
    return 1;
}

static void check_decode_result(const cache_model *cm, const seq_model *sm, uint32_t l, const float *q,
                                const float *out)
{
    int tier = 0;
    double err = decode_error(cm, sm, l, q, out, &tier);
    double tol = tol_tier[tier] > (out_f16 ? 1e-3 : 0) ? tol_tier[tier] : 1e-3; /* outputs rounded to fp16 */
    CHECK(err <= tol, "%s: seq %u layer %u: decode differs from the reference by %.3g (tolerance %.3g, "
          "coarsest tier %d%s)", cm->name, sm->id, l, err, tol, tier, out_f16 ? ", fp16 output" : "");
    double *worst = out_f16 ? &worst_decode_f16out : &worst_decode[tier];
    *worst = err > *worst ? err : *worst;
}

/* A decode of (layer) of one sequence, compared with the reference. */
static void check_decode(cache_model *cm, seq_model *sm, uint32_t l)
{
    if (!decodable(sm, l))
        return;
    float q[QH * D], out[QH * D];
    for (int i = 0; i < QH * D; i++)
        q[i] = test_gauss(&rng);
    skv_cache_stats st0 = {.struct_size = sizeof st0}, st1 = {.struct_size = sizeof st1};
    CHECK_OK(skv_cache_get_stats(cm->c, &st0));
    CHECK_OK(skv_attention_decode(cm->c, l, &sm->id, 1, SKV_F32, q, SCALE, SKV_F32, out));
    CHECK_OK(skv_cache_get_stats(cm->c, &st1));
    if (st1.compressions != st0.compressions) /* deferred compressions ran first (--deferred) */
        absorb(cm, NULL);
    check_decode_result(cm, sm, l, q, out);
}

/* ---- the operations -------------------------------------------------------------------- */

typedef struct op_args {
    int op;
    seq_model *sm;
    uint32_t layer, n;
    uint64_t begin, end;
    skv_tier tier;
    /* append */
    float *k, *v;
    int32_t *pos;
    /* decode */
    uint32_t nb;
    skv_seq_id ids[MAX_SEQ];
    seq_model *batch[MAX_SEQ];
    float q[MAX_SEQ * QH * D], out[MAX_SEQ * QH * D];
    int q_f16, out_f16; /* decode: queries and outputs as halves */
    uint16_t qh[MAX_SEQ * QH * D], outh[MAX_SEQ * QH * D];
    /* logits and scores */
    float logits[QH * MAX_LEN];
    size_t counts[H];
    uint32_t head;
    float scores[MAX_LEN];
    size_t n_scores;
    skv_seq_id child;
    cl_mem kbuf, vbuf;
} op_args;

static seq_model *pick_live(cache_model *cm)
{
    int live[MAX_SEQ], n = 0;
    for (int i = 0; i < MAX_SEQ; i++)
        if (cm->seq[i] && cm->seq[i]->live)
            live[n++] = i;
    return n ? cm->seq[live[below((uint32_t)n)]] : NULL;
}

static int free_slot(cache_model *cm)
{
    for (int i = 0; i < MAX_SEQ; i++)
        if (!cm->seq[i] || !cm->seq[i]->live)
            return i;
    return -1;
}

/* Inputs of an append of n tokens to (layer): fp16 values, positions after the last. */
static void make_append(op_args *a)
{
    layer_model *lm = &a->sm->lay[a->layer];
    size_t elems = (size_t)a->n * H * D;
    a->k = malloc(elems * sizeof(float));
    a->v = malloc(elems * sizeof(float));
    a->pos = malloc(a->n * sizeof(int32_t));
    int32_t p = lm->n ? lm->pos[lm->n - 1] + 1 : 0;
    for (uint32_t t = 0; t < a->n; t++) {
        a->pos[t] = p;
        p += 1 + (int32_t)below(3);
        for (uint32_t i = 0; i < H * D; i++) {
            a->k[(size_t)t * H * D + i] = f16(test_gauss(&rng) + (i % D == 1 ? 3.0f : 0.0f));
            a->v[(size_t)t * H * D + i] = f16(test_gauss(&rng));
        }
    }
}

static void free_append(op_args *a)
{
    free(a->k), free(a->v), free(a->pos);
    a->k = a->v = NULL;
    a->pos = NULL;
    if (a->kbuf)
        clReleaseMemObject(a->kbuf);
    if (a->vbuf)
        clReleaseMemObject(a->vbuf);
    a->kbuf = a->vbuf = NULL;
}

/* The K and V of an skv_append_cl in buffers of the context (written before the call). */
static void make_append_cl(op_args *a)
{
    cl_context cl_ctx;
    cl_device_id dev;
    cl_command_queue q, tq;
    CHECK_OK(skv_context_cl_objects(ctx, &cl_ctx, &dev, &q, &tq));
    size_t bytes = (size_t)a->n * H * D * sizeof(float) + 64;
    cl_int e1, e2;
    a->kbuf = clCreateBuffer(cl_ctx, CL_MEM_READ_ONLY, bytes, NULL, &e1);
    a->vbuf = clCreateBuffer(cl_ctx, CL_MEM_READ_ONLY, bytes, NULL, &e2);
    CHECK(e1 == CL_SUCCESS && e2 == CL_SUCCESS, "clCreateBuffer: %d %d", e1, e2);
    e1 = clEnqueueWriteBuffer(q, a->kbuf, CL_TRUE, 64, bytes - 64, a->k, 0, NULL, NULL);
    e2 = clEnqueueWriteBuffer(q, a->vbuf, CL_TRUE, 0, bytes - 64, a->v, 0, NULL, NULL);
    CHECK(e1 == CL_SUCCESS && e2 == CL_SUCCESS, "clEnqueueWriteBuffer: %d %d", e1, e2);
}

static skv_status run(cache_model *cm, op_args *a)
{
    skv_cache *c = cm->c;
    switch (a->op) {
    case OP_APPEND:
        return skv_append(c, a->sm->id, a->layer, a->n, SKV_F32, a->k, a->v, a->pos);
    case OP_APPEND_CL:
        return skv_append_cl(c, a->sm->id, a->layer, a->n, SKV_F32, a->kbuf, 64, a->vbuf, 0, a->pos, 0, NULL, NULL);
    case OP_FORK:
        return skv_seq_fork(c, a->sm->id, &a->child);
    case OP_QUANTIZE:
        return skv_seq_quantize(c, a->sm->id, a->begin, a->end, a->tier);
    case OP_COMPRESS:
        return skv_compress(c, a->sm->id);
    case OP_OFFLOAD:
        return skv_seq_offload(c, a->sm->id, a->begin, a->end);
    case OP_FETCH:
        return skv_seq_fetch(c, a->sm->id, a->begin, a->end);
    case OP_DECODE:
        return skv_attention_decode(c, a->layer, a->ids, a->nb, a->q_f16 ? SKV_F16 : SKV_F32,
                                    a->q_f16 ? (const void *)a->qh : a->q, SCALE, a->out_f16 ? SKV_F16 : SKV_F32,
                                    a->out_f16 ? (void *)a->outh : a->out);
    case OP_LOGITS:
        return skv_attention_logits(c, a->layer, a->sm->id, SKV_F32, a->q, SCALE, a->logits, MAX_LEN, a->counts);
    case OP_SCORES:
        return skv_seq_scores(c, a->sm->id, a->layer, a->head, a->scores, MAX_LEN, &a->n_scores);
    case OP_FREE:
        return skv_seq_free(c, a->sm->id);
    case OP_CREATE:
        return skv_seq_create(c, &a->child);
    }
    return SKV_ERR_INTERNAL;
}

/* Draws an operation and its arguments; 0 when it does not apply now (drawn again). */
static int plan(cache_model *cm, op_args *a)
{
    memset(a, 0, sizeof *a);
    /* weights: appends and decodes most, sequences freed seldom, so that they grow */
    static const uint8_t weight[OP_COUNT] = {24, 8, 4, 6, 6, 5, 8, 16, 6, 6, 2, 3};
    uint32_t w = below(94), o = 0;
    while (w >= weight[o])
        w -= weight[o++];
    a->op = (int)o;
    int slot = free_slot(cm);
    if (a->op == OP_CREATE)
        return slot >= 0;
    a->sm = pick_live(cm);
    if (!a->sm)
        return 0;
    a->layer = below(L);
    layer_model *lm = &a->sm->lay[a->layer];
    switch (a->op) {
    case OP_APPEND:
    case OP_APPEND_CL:
        if (a->op == OP_APPEND_CL && cm->rdr && !deferred)
            return 0; /* its compressions are deferred to later calls (--deferred) */
        a->n = 1 + below(below(2) ? 8 : 40);
        if (lm->n + a->n > MAX_LEN)
            a->op = OP_FREE; /* long enough: start over */
        return 1;
    case OP_FORK:
        return slot >= 0;
    case OP_QUANTIZE:
        if (!cm->ada)
            return 0;
        a->begin = below(lm->n + 1);
        a->end = a->begin + below(lm->n + P);
        a->tier = below(2) ? SKV_TIER_A3V4 : SKV_TIER_A2V2;
        return 1;
    case OP_COMPRESS:
        return cm->rdr;
    case OP_OFFLOAD:
    case OP_FETCH: {
        uint64_t most = 0;
        for (uint32_t l = 0; l < L; l++)
            most = a->sm->lay[l].n > most ? a->sm->lay[l].n : most;
        a->begin = below((uint32_t)most + 1);
        a->end = a->begin + below((uint32_t)most + P);
        return 1;
    }
    case OP_DECODE: {
        /* a batch of the live sequences, in a random order: those decode can serve,
         * now and then one it must refuse */
        for (int i = 0; i < MAX_SEQ; i++)
            if (cm->seq[i] && cm->seq[i]->live && below(4) != 0 &&
                (decodable(cm->seq[i], a->layer) || below(16) == 0))
                a->batch[a->nb++] = cm->seq[i];
        if (a->nb == 0)
            a->batch[a->nb++] = a->sm;
        for (uint32_t i = a->nb; i > 1; i--) {
            uint32_t j = below(i);
            seq_model *t = a->batch[i - 1];
            a->batch[i - 1] = a->batch[j], a->batch[j] = t;
        }
        for (uint32_t i = 0; i < a->nb; i++)
            a->ids[i] = a->batch[i]->id;
        a->q_f16 = below(4) == 0;
        a->out_f16 = below(4) == 0;
        for (uint32_t i = 0; i < a->nb * QH * D; i++) {
            a->q[i] = test_gauss(&rng);
            if (a->q_f16)
                a->qh[i] = skv_ref_f32_to_f16(a->q[i]), a->q[i] = skv_ref_f16_to_f32(a->qh[i]);
        }
        return 1;
    }
    case OP_LOGITS:
        for (uint32_t i = 0; i < QH * D; i++)
            a->q[i] = test_gauss(&rng);
        return 1;
    case OP_SCORES:
        a->head = below(H);
        return 1;
    case OP_FREE:
        return 1;
    }
    return 0;
}

/* Whether the operation must fail without a fault, by the model: decode needs a token
 * on the device for every kv-head of every sequence of the batch; logits every page on
 * the device. */
static int must_refuse(const op_args *a)
{
    if (a->op == OP_DECODE) {
        for (uint32_t i = 0; i < a->nb; i++)
            if (!decodable(a->batch[i], a->layer))
                return 1;
    }
    if (a->op == OP_LOGITS) {
        if (a->sm->lay[a->layer].n == 0)
            return 1;
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t i = 0; i < a->sm->hd[a->layer][h].n; i++)
                if (a->sm->hd[a->layer][h].host[i])
                    return 1;
    }
    if (a->op == OP_COMPRESS) { /* RDR reads every page of the sequence on the device */
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t h = 0; h < H; h++)
                for (uint32_t i = 0; i < a->sm->hd[l][h].n; i++)
                    if (a->sm->hd[l][h].host[i])
                        return 1;
    }
    if (a->op == OP_SCORES) {
        const held *hd = &a->sm->hd[a->layer][a->head];
        for (uint32_t i = 0; i < hd->n; i++)
            if (hd->host[i])
                return 1;
    }
    if (a->op == OP_QUANTIZE) { /* F16 pages in the range in host memory */
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t h = 0; h < H; h++) {
                const held *hd = &a->sm->hd[l][h];
                uint64_t first = (a->begin + P - 1) / P, n = hd->count[SKV_TIER_F16];
                uint64_t last = (a->end < n ? a->end : n) / P;
                for (uint64_t j = first; j < last; j++)
                    if (hd->host[j * P])
                        return 1;
            }
    }
    return 0;
}

/* Whether an operation may fail without a fault: what a pool budget may refuse. */
static int may_refuse(const op_args *a, skv_status st)
{
    if (st != SKV_ERR_OUT_OF_MEMORY)
        return 0;
    return a->op == OP_APPEND || a->op == OP_APPEND_CL || a->op == OP_FORK || a->op == OP_QUANTIZE ||
           a->op == OP_OFFLOAD || a->op == OP_FETCH || a->op == OP_COMPRESS;
}

/* ---- what a successful operation must have done ------------------------------------------- */

/* A (layer, kv-head) RDR compressed: a subset of what it held before (`old`) and of
 * `extra` new positions, the sinks kept, within the budget. */
static void check_compressed(const cache_model *cm, const seq_model *sm, uint32_t l, uint32_t h, const held *old,
                             const int32_t *extra, uint32_t n_extra, const held *nw)
{
    for (uint32_t i = 0; i < nw->n; i++) {
        int found = 0;
        for (uint32_t j = 0; j < old->n && !found; j++)
            found = old->pos[j] == nw->pos[i];
        for (uint32_t j = 0; j < n_extra && !found; j++)
            found = extra[j] == nw->pos[i];
        CHECK(found, "%s: seq %u (%u, %u): compression brought back position %d", cm->name, sm->id, l, h, nw->pos[i]);
    }
    for (uint32_t j = 0; j < old->n; j++)
        if (old->pos[j] < (int32_t)N_SINK) {
            int found = 0;
            for (uint32_t i = 0; i < nw->n && !found; i++)
                found = nw->pos[i] == old->pos[j];
            CHECK(found, "%s: seq %u (%u, %u): compression dropped sink position %d", cm->name, sm->id, l, h,
                  old->pos[j]);
        }
    if (n_extra && deferred) { /* a deferred compression may have run before the append's tokens came */
        double allowed = rdr_limit(&sm->lay[l], nw) + (n_extra + P) * page_bytes(SKV_TIER_F16) / P;
        CHECK(held_bytes(nw) <= allowed, "%s: seq %u layer %u: %.0f bytes after RDR and an append, at most %.0f",
              cm->name, sm->id, l, held_bytes(nw), allowed);
    } else {
        check_budget(cm, sm, l, nw);
    }
}

/* Deferred compressions (--deferred: skv_append_cl on the RDR cache) run in later
 * append and decode calls, on any sequence: what changed must be a compression. */
static void absorb_one(cache_model *cm, seq_model *sm)
{
    static held now[L][H];
    read_held(cm, sm, now);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++)
            if (!held_equal(&now[l][h], &sm->hd[l][h])) {
                CHECK(deferred, "%s: seq %u (%u, %u) changed: %u tokens held -> %u", cm->name, sm->id, l, h,
                      sm->hd[l][h].n, now[l][h].n);
                check_holding(cm, sm, l, h, &now[l][h]);
                check_compressed(cm, sm, l, h, &sm->hd[l][h], NULL, 0, &now[l][h]);
                sm->hd[l][h] = now[l][h];
                sm->rdr_blocked[l] = 0;
            }
}

static void absorb(cache_model *cm, const seq_model *except)
{
    for (int i = 0; i < MAX_SEQ; i++)
        if (cm->seq[i] && cm->seq[i]->live && cm->seq[i] != except)
            absorb_one(cm, cm->seq[i]);
}

static void commit_append(cache_model *cm, op_args *a, uint64_t compressions_before)
{
    seq_model *sm = a->sm;
    layer_model *lm = &sm->lay[a->layer];
    for (uint32_t t = 0; t < a->n; t++) {
        lm->pos[lm->n] = a->pos[t];
        for (uint32_t h = 0; h < H; h++) {
            lm->via[lm->n][h] = 0;
            memcpy(lm->k[lm->n][h], a->k + ((size_t)t * H + h) * D, D * sizeof(float));
            memcpy(lm->v[lm->n][h], a->v + ((size_t)t * H + h) * D, D * sizeof(float));
        }
        lm->n++;
    }
    skv_cache_stats st = {.struct_size = sizeof st};
    CHECK_OK(skv_cache_get_stats(cm->c, &st));
    int compressed = st.compressions != compressions_before;
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t i = 0; i < sm->hd[a->layer][h].n; i++)
            sm->rdr_blocked[a->layer] |= cm->rdr && sm->hd[a->layer][h].host[i];
    if (compressed)
        sm->rdr_blocked[a->layer] = 0;
    static held now[L][H];
    read_held(cm, sm, now);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            held *old = &sm->hd[l][h], *nw = &now[l][h];
            check_holding(cm, sm, l, h, nw);
            held want = *old; /* the F16 list grew by the new tokens at its end */
            if (l == a->layer) {
                uint32_t at = old->count[SKV_TIER_F16];
                memmove(want.pos + at + a->n, want.pos + at, (old->n - at) * sizeof want.pos[0]);
                memmove(want.tier + at + a->n, want.tier + at, old->n - at);
                memmove(want.host + at + a->n, want.host + at, old->n - at);
                for (uint32_t t = 0; t < a->n; t++)
                    want.pos[at + t] = a->pos[t], want.tier[at + t] = SKV_TIER_F16, want.host[at + t] = 0;
                want.n += a->n;
                want.count[SKV_TIER_F16] += a->n;
            }
            if (!held_equal(&want, nw)) { /* else a compression ran: this one's, or a deferred one */
                CHECK(compressed && (l == a->layer || deferred),
                      "%s: seq %u (%u, %u): append of %u made %u tokens held, expected %u", cm->name, sm->id, l, h,
                      a->n, nw->n, want.n);
                check_compressed(cm, sm, l, h, old, l == a->layer ? a->pos : NULL, l == a->layer ? a->n : 0, nw);
            }
            *old = *nw;
        }
}

static void commit_fork(cache_model *cm, op_args *a)
{
    int slot = free_slot(cm);
    if (!cm->seq[slot])
        cm->seq[slot] = malloc(sizeof(seq_model));
    seq_model *child = cm->seq[slot];
    memcpy(child, a->sm, sizeof *child);
    child->id = a->child;
    check_unchanged(cm, child, "fork: the child is the parent");
    check_unchanged(cm, a->sm, "fork: the parent");
}

static void commit_quantize(cache_model *cm, op_args *a)
{
    static held now[L][H];
    read_held(cm, a->sm, now);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            held *old = &a->sm->hd[l][h], want;
            /* F16 pages [first, last) join the end of the tier's list */
            uint32_t nf = old->count[SKV_TIER_F16];
            uint64_t first = (a->begin + P - 1) / P, last = (a->end < nf ? a->end : nf) / P;
            if (last < first)
                last = first;
            uint32_t moved = (uint32_t)(last - first) * P, i = 0;
            memset(&want, 0, sizeof want);
            for (int t = 0; t < SKV_TIER_COUNT; t++) {
                uint32_t at = 0;
                for (int u = 0; u < t; u++)
                    at += old->count[u];
                for (uint32_t k = 0; k < old->count[t]; k++) {
                    if (t == SKV_TIER_F16 && k >= first * P && k < last * P)
                        continue;
                    want.pos[i] = old->pos[at + k], want.tier[i] = (uint8_t)t, want.host[i] = old->host[at + k];
                    i++;
                }
                if (t == (int)a->tier)
                    for (uint32_t k = 0; k < moved; k++, i++)
                        want.pos[i] = old->pos[first * P + k], want.tier[i] = (uint8_t)t, want.host[i] = 0;
                want.count[t] = old->count[t] + (t == (int)a->tier ? moved : 0) - (t == SKV_TIER_F16 ? moved : 0);
            }
            want.n = i;
            CHECK(held_equal(&want, &now[l][h]),
                  "%s: seq %u (%u, %u): quantize [%llu, %llu) to tier %d: %u F16 tokens -> %u, expected %u", cm->name,
                  a->sm->id, l, h, (unsigned long long)a->begin, (unsigned long long)a->end, a->tier, nf,
                  now[l][h].count[SKV_TIER_F16], want.count[SKV_TIER_F16]);
            *old = now[l][h];
        }
}

static void commit_compress(cache_model *cm, op_args *a)
{
    static held now[L][H];
    read_held(cm, a->sm, now);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            held *old = &a->sm->hd[l][h], *nw = &now[l][h];
            check_holding(cm, a->sm, l, h, nw);
            for (uint32_t i = 0; i < nw->n; i++) { /* a subset of what was held */
                uint32_t j = 0;
                while (j < old->n && old->pos[j] != nw->pos[i])
                    j++;
                CHECK(j < old->n, "%s: seq %u (%u, %u): compress brought back position %d", cm->name, a->sm->id, l,
                      h, nw->pos[i]);
            }
            for (uint32_t j = 0; j < old->n; j++) /* the sinks stay */
                if (old->pos[j] < (int32_t)N_SINK) {
                    uint32_t i = 0;
                    while (i < nw->n && nw->pos[i] != old->pos[j])
                        i++;
                    CHECK(i < nw->n, "%s: seq %u (%u, %u): compress dropped sink position %d", cm->name, a->sm->id,
                          l, h, old->pos[j]);
                }
            check_budget(cm, a->sm, l, nw);
            *old = *nw;
            a->sm->rdr_blocked[l] = 0;
        }
}

/* offload / fetch: exactly the full pages [ceil(begin / P), min(end, tokens) / P) of each
 * list now in the target memory, nothing else moved */
static void commit_move(cache_model *cm, op_args *a)
{
    static held now[L][H];
    read_held(cm, a->sm, now);
    uint8_t to_host = a->op == OP_OFFLOAD;
    uint64_t host_pages = 0;
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            held *old = &a->sm->hd[l][h], want = *old;
            uint32_t at = 0;
            for (int t = 0; t < SKV_TIER_COUNT; t++) {
                uint64_t n = old->count[t], first = (a->begin + P - 1) / P, last = (a->end < n ? a->end : n) / P;
                for (uint64_t j = first; j < last; j++)
                    for (uint32_t k = 0; k < P; k++)
                        want.host[at + j * P + k] = to_host;
                for (uint32_t k = 0; k < n; k += P)
                    host_pages += want.host[at + k];
                at += old->count[t];
            }
            CHECK(held_equal(&want, &now[l][h]), "%s: seq %u (%u, %u): %s [%llu, %llu) moved other pages", cm->name,
                  a->sm->id, l, h, op_names[a->op], (unsigned long long)a->begin, (unsigned long long)a->end);
            *old = now[l][h];
        }
    uint64_t got = 0;
    CHECK_OK(skv_seq_host_pages(cm->c, a->sm->id, &got));
    CHECK(got == host_pages, "%s: seq %u: %llu host pages, the lists say %llu", cm->name, a->sm->id,
          (unsigned long long)got, (unsigned long long)host_pages);
}

static void commit_logits(cache_model *cm, op_args *a)
{
    const layer_model *lm = &a->sm->lay[a->layer];
    for (uint32_t h = 0; h < H; h++) {
        const held *hd = &a->sm->hd[a->layer][h];
        CHECK(a->counts[h] == hd->n, "%s: logits count %zu for head %u, holds %u", cm->name, a->counts[h], h, hd->n);
        for (uint32_t g = 0; g < GROUP; g++) {
            uint32_t qh = h * GROUP + g;
            for (uint32_t i = 0; i < hd->n; i++) {
                float k[D], v[D];
                token_kv(cm, a->layer, h, lm, find_pos(lm, hd->pos[i]), hd->tier[i], k, v);
                double dot = 0;
                for (uint32_t d = 0; d < D; d++)
                    dot += (double)a->q[qh * D + d] * k[d];
                dot *= SCALE;
                double err = fabs(a->logits[(size_t)qh * MAX_LEN + i] - dot) / (1 + fabs(dot));
                CHECK(err < 1e-4, "%s: seq %u layer %u q-head %u token %u (position %d, tier %d): logit %g, reference %g",
                      cm->name, a->sm->id, a->layer, qh, i, hd->pos[i], hd->tier[i],
                      a->logits[(size_t)qh * MAX_LEN + i], dot);
                double *worst = hd->tier[i] == SKV_TIER_F16 ? &worst_logit_f16 : &worst_logit_ada;
                *worst = err > *worst ? err : *worst;
            }
        }
    }
}

/* keydiff (the RDR cache): -cos(k, a), a the mean of k/|k| over every key appended;
 * knorm (the ADA cache): -|k|. F16 tokens only. */
static void commit_scores(cache_model *cm, op_args *a)
{
    const layer_model *lm = &a->sm->lay[a->layer];
    const held *hd = &a->sm->hd[a->layer][a->head];
    CHECK(a->n_scores == hd->n, "%s: %zu scores, %u held", cm->name, a->n_scores, hd->n);
    float unit[D];
    double acc[D] = {0};
    for (uint32_t j = 0; j < lm->n; j++) {
        const float *k = lm->k[j][a->head];
        double nn = 0;
        for (uint32_t d = 0; d < D; d++)
            nn += (double)k[d] * k[d];
        nn = sqrt(nn);
        for (uint32_t d = 0; d < D; d++)
            acc[d] += nn > 0 ? k[d] / nn : 0;
    }
    for (uint32_t d = 0; d < D; d++)
        unit[d] = lm->n ? (float)(acc[d] / lm->n) : 0;
    for (uint32_t i = 0; i < hd->n; i++) {
        float k[D], v[D];
        token_kv(cm, a->layer, a->head, lm, find_pos(lm, hd->pos[i]), hd->tier[i], k, v);
        float ref = skv_ref_score_key(cm->rdr ? SKV_SCORER_KEYDIFF : SKV_SCORER_KNORM, k, D, NULL, unit, hd->pos[i],
                                      N_SINK);
        double err = fabs(a->scores[i] - ref) / (1 + fabs(ref));
        CHECK(err < 2e-3, "%s: seq %u (%u, %u) token %u (position %d, tier %d): score %g, reference %g", cm->name,
              a->sm->id, a->layer, a->head, i, hd->pos[i], hd->tier[i], a->scores[i], ref);
        double *worst = hd->tier[i] == SKV_TIER_F16 ? &worst_score : &worst_score_ada;
        *worst = err > *worst ? err : *worst;
    }
}

/* ---- one step ----------------------------------------------------------------------------- */

enum { FAULT_NONE, FAULT_ALLOC, FAULT_CL };

static void one_step(void)
{
    int ci = (int)below(2);
    cache_model *cm = &caches[ci];
    op_args *a = calloc(1, sizeof *a);
    while (!plan(cm, a))
        ;
    cur_op = op_names[a->op];
    snprintf(cur_detail, sizeof cur_detail, "%s cache, seq %d, layer %u, n %u, range [%llu, %llu)", cm->name,
             a->sm ? (int)a->sm->id : -1, a->layer, a->n, (unsigned long long)a->begin, (unsigned long long)a->end);
    if (a->op == OP_APPEND || a->op == OP_APPEND_CL)
        make_append(a);
    if (a->op == OP_APPEND_CL)
        make_append_cl(a);

    skv_cache_stats before = {.struct_size = sizeof before};
    CHECK_OK(skv_cache_get_stats(cm->c, &before));
    int fault = below(8) == 0 ? FAULT_ALLOC : below(7) == 0 ? FAULT_CL : FAULT_NONE;
    long at = 0;
    if (fault == FAULT_ALLOC && max_allocs[ci][a->op] == 0)
        fault = FAULT_NONE;
    if (fault == FAULT_CL && max_cl[ci][a->op] == 0)
        fault = FAULT_NONE;
    static const cl_int codes[] = {CL_OUT_OF_RESOURCES, CL_MEM_OBJECT_ALLOCATION_FAILURE, CL_OUT_OF_HOST_MEMORY};
    counter.calls = 0;
    cl_fault_calls = 0;
    if (fault == FAULT_ALLOC)
        counter.fail_at = at = 1 + (long)below((uint32_t)max_allocs[ci][a->op]);
    if (fault == FAULT_CL) {
        cl_fault_at = at = (long)below((uint32_t)max_cl[ci][a->op]);
        cl_fault_code = codes[below(3)];
    }
    skv_context_stats cs0 = {.struct_size = sizeof cs0}, cs1 = {.struct_size = sizeof cs1};
    CHECK_OK(skv_context_get_stats(ctx, &cs0));
    skv_status st = run(cm, a);
    int hit = fault == FAULT_ALLOC ? counter.calls >= counter.fail_at : fault == FAULT_CL ? cl_fault_calls > cl_fault_at : 0;
    counter.fail_at = 0;
    cl_fault_at = -1;
    if (fault == FAULT_NONE && st == SKV_OK) {
        if (counter.calls > max_allocs[ci][a->op])
            max_allocs[ci][a->op] = counter.calls;
        if (cl_fault_calls > max_cl[ci][a->op])
            max_cl[ci][a->op] = cl_fault_calls;
    }
    n_ops[a->op]++;
    int refuse = must_refuse(a);

    if (hit) {
        n_faulted[a->op]++;
        /* Absorbed by design (then checked as a success): a compression an append runs
         * leaves the append done when it fails (retried at the next append); RDR keeps
         * its scores for the next compression at best (a failed allocation there only
         * means scoring every token next time) */
        CHECK_OK(skv_context_get_stats(ctx, &cs1));
        int loaded = cs1.programs_built != cs0.programs_built || cs1.programs_from_cache != cs0.programs_from_cache;
        int absorbs = cm->rdr && (a->op == OP_APPEND || (a->op == OP_COMPRESS && fault == FAULT_ALLOC));
        /* a kernel's first use: a program-cache read that fails falls back to a build */
        absorbs |= loaded;
        /* a deferred compression that fails is retried at a later call (--deferred) */
        absorbs |= deferred && before.deferred_pending > 0;
        /* a failed flush (a hint) or status query (answered by a wait) */
        absorbs |= fault == FAULT_CL && cl_fault_absorbable();
        CHECK(st != SKV_OK || absorbs, "%s %ld failed (%s), the operation returned OK",
              fault == FAULT_ALLOC ? "allocation" : "OpenCL call", at, fault == FAULT_ALLOC ? "NULL" : "error");
        n_absorbed[a->op] += st == SKV_OK;
        CHECK(st != SKV_ERR_INTERNAL && st != SKV_ERR_INVALID_ARG, "faulted: %s (%s)", skv_status_str(st),
              skv_last_error());
    } else if (refuse) {
        n_refused[a->op]++;
        CHECK(st != SKV_OK, "returned OK where the model says it must be refused");
    } else if (st != SKV_OK) {
        CHECK(may_refuse(a, st), "failed without a fault: %s (%s)", skv_status_str(st), skv_last_error());
        n_refused[a->op]++;
    }

    skv_cache_stats mid = {.struct_size = sizeof mid};
    CHECK_OK(skv_cache_get_stats(cm->c, &mid));
    int compressions_moved = mid.compressions != before.compressions;
    if (compressions_moved && a->op != OP_COMPRESS) /* deferred compressions of other sequences */
        absorb(cm, a->sm);
    if (st == SKV_OK && compressions_moved && (a->op == OP_DECODE || a->op == OP_LOGITS || a->op == OP_SCORES))
        absorb_one(cm, a->sm); /* deferred compressions ran before the call's work */
    if (st != SKV_OK) {
        CHECK_OK(skv_context_finish(ctx));
        if (a->sm && compressions_moved && a->op != OP_COMPRESS)
            absorb_one(cm, a->sm);
        if (a->sm)
            check_unchanged(cm, a->sm, "after a failed operation");
        skv_cache_stats after = {.struct_size = sizeof after};
        CHECK_OK(skv_cache_get_stats(cm->c, &after));
        for (int t = 0; t < SKV_TIER_COUNT && !compressions_moved; t++)
            for (int m = 0; m < SKV_MEM_COUNT; m++)
                CHECK(after.pools[t][m].pages_used == before.pools[t][m].pages_used,
                      "tier %d %s pages in use %llu -> %llu after a failed operation", t, m ? "host" : "device",
                      (unsigned long long)before.pools[t][m].pages_used,
                      (unsigned long long)after.pools[t][m].pages_used);
        CHECK(after.sequences == before.sequences, "sequences %u -> %u after a failed operation", before.sequences,
              after.sequences);
    } else {
        switch (a->op) {
        case OP_APPEND:
        case OP_APPEND_CL:
            commit_append(cm, a, before.compressions);
            break;
        case OP_FORK:
            commit_fork(cm, a);
            break;
        case OP_QUANTIZE:
            commit_quantize(cm, a);
            break;
        case OP_COMPRESS:
            commit_compress(cm, a);
            break;
        case OP_OFFLOAD:
        case OP_FETCH:
            commit_move(cm, a);
            break;
        case OP_DECODE:
            for (uint32_t i = 0; a->out_f16 && i < a->nb * QH * D; i++)
                a->out[i] = skv_ref_f16_to_f32(a->outh[i]);
            out_f16 = a->out_f16;
            for (uint32_t i = 0; i < a->nb; i++)
                check_decode_result(cm, a->batch[i], a->layer, a->q + (size_t)i * QH * D,
                                    a->out + (size_t)i * QH * D);
            out_f16 = 0;
            break;
        case OP_LOGITS:
            commit_logits(cm, a);
            break;
        case OP_SCORES:
            commit_scores(cm, a);
            break;
        case OP_FREE:
            a->sm->live = 0;
            break;
        case OP_CREATE: {
            int slot = free_slot(cm);
            if (!cm->seq[slot])
                cm->seq[slot] = malloc(sizeof(seq_model));
            memset(cm->seq[slot], 0, sizeof(seq_model));
            cm->seq[slot]->live = 1;
            cm->seq[slot]->id = a->child;
            check_unchanged(cm, cm->seq[slot], "a new sequence is empty");
            break;
        }
        }
        if (a->op != OP_DECODE && a->op != OP_LOGITS && a->op != OP_SCORES && a->op != OP_FREE && a->sm &&
            a->sm->live && below(2) == 0)
            check_decode(cm, a->sm, below(L));
    }
    for (int i = 0; i < 2; i++)
        check_pools(&caches[i]);
    free_append(a);
    free(a);
}

static void make_caches(void)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 512u << 10; /* ~120 F16 pages: now and then an append finds no room */
    d.host_budget_bytes = 256u << 10;
    d.retention = SKV_RETENTION_RDR;
    d.scorer = SKV_SCORER_KEYDIFF;
    d.budget_ratio = RATIO;
    d.recent_window = RECENT;
    d.slack = SLACK;
    d.n_sink = N_SINK;
    if (rdr_tiers) /* RDR chooses F16, A3V4, A2V2 or drop per token */
        d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4) | (1u << SKV_TIER_A2V2);
    caches[0].name = "rdr";
    caches[0].rdr = 1;
    caches[0].ada = rdr_tiers;
    CHECK_OK(skv_cache_create(ctx, &d, &caches[0].c));

    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 512u << 10;
    d.host_budget_bytes = 256u << 10;
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4) | (1u << SKV_TIER_A2V2);
    d.scorer = SKV_SCORER_KNORM;
    caches[1].name = "ada";
    caches[1].ada = 1;
    CHECK_OK(skv_cache_create(ctx, &d, &caches[1].c));
}

int main(int argc, char **argv)
{
    uint64_t ops = 10000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--ops") == 0 && i + 1 < argc)
            ops = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "--rdr-tiers") == 0)
            rdr_tiers = 1;
        else if (strcmp(argv[i], "--deferred") == 0)
            deferred = 1;
        else {
            fprintf(stderr, "usage: %s [--seed N] [--ops M] [--quiet] [--rdr-tiers] [--deferred]\n", argv[0]);
            return 2;
        }
    }
    printf("soak: seed %llu, %llu operations\n", (unsigned long long)seed, (unsigned long long)ops);
    fflush(stdout);
    rng.s = seed * 0x9E3779B97F4A7C15ULL + 1;
    if (getenv("SOAK_BACKTRACE"))
        cl_fault_hook = soak_cl_backtrace;
    ctx = test_context_with(&counting);
    make_caches();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (step = 0; step < ops; step++) {
        one_step();
        if (!quiet && (step + 1) % 10000 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            printf("soak: %llu operations, %.1f s, %.0f ops/s\n", (unsigned long long)step + 1, s,
                   (double)(step + 1) / s);
            fflush(stdout);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    cur_op = "teardown";
    skv_cache_stats rs = {.struct_size = sizeof rs};
    CHECK_OK(skv_cache_get_stats(caches[0].c, &rs));
    printf("soak: RDR cache: %llu compressions, %llu of them deferred\n", (unsigned long long)rs.compressions,
           (unsigned long long)rs.deferred_compressions);
    skv_context_stats cs = {.struct_size = sizeof cs};
    CHECK_OK(skv_context_get_stats(ctx, &cs));
    printf("soak: programs built %llu, from the cache %llu, cache entries rejected %llu\n",
           (unsigned long long)cs.programs_built, (unsigned long long)cs.programs_from_cache,
           (unsigned long long)cs.cache_rejected);
    for (int i = 0; i < 2; i++) {
        skv_cache_destroy(caches[i].c);
        for (int j = 0; j < MAX_SEQ; j++)
            free(caches[i].seq[j]);
    }
    skv_context_destroy(ctx);
    CHECK(counter.live == 0, "%ld host allocations leaked", counter.live);
    CHECK(cl_live_mem == 0 && cl_live_kernel == 0 && cl_live_program == 0,
          "OpenCL objects leaked: %ld memory objects, %ld kernels, %ld programs", cl_live_mem, cl_live_kernel,
          cl_live_program);
    printf("soak: seed %llu, %llu operations in %.1f s (%.0f ops/s), no invariant broken\n",
           (unsigned long long)seed, (unsigned long long)ops, secs, (double)ops / secs);
    for (int op = 0; op < OP_COUNT; op++)
        printf("  %-9s %8llu runs, %7llu faulted (%llu absorbed), %6llu refused\n", op_names[op],
               (unsigned long long)n_ops[op], (unsigned long long)n_faulted[op], (unsigned long long)n_absorbed[op],
               (unsigned long long)n_refused[op]);
    printf("  worst errors: decode over F16 %.2g, coarsest A4V8 %.2g, A3V4 %.2g, A2V2 %.2g, any with fp16 output "
           "%.2g; logits F16 %.2g, ADA %.2g; scores F16 %.2g, ADA %.2g\n", worst_decode[0], worst_decode[1],
           worst_decode[2], worst_decode[3], worst_decode_f16out, worst_logit_f16, worst_logit_ada, worst_score,
           worst_score_ada);
    return 0;
}
