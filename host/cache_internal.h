/* Internal structure of skv_cache: page pools, sequences and their page lists, and the
 * kernels and scratch buffers of one cache. Only host/ includes this file. */
#ifndef SKV_CACHE_INTERNAL_H
#define SKV_CACHE_INTERNAL_H

#include "host_internal.h"
#include "skv_ref.h"

#define SKVI_POOL_MAX_CHUNKS 8 /* must match SKV_POOL_PARAMS in cl/common.h */
#define SKVI_HOST_BIT 0x80000000u /* page-list entries: set for a page in host memory */

/* One arena of same-size pages in one memory kind: up to 8 chunk buffers, a free stack
 * and a reference count per page. */
typedef struct skvi_pool {
    skv_memory mem;
    uint64_t page_bytes;
    uint32_t pages_per_chunk; /* page id = chunk * pages_per_chunk + index */
    uint32_t n_chunks;
    cl_mem chunk[SKVI_POOL_MAX_CHUNKS];
    uint32_t chunk_pages[SKVI_POOL_MAX_CHUNKS]; /* the last chunk may be smaller */
    uint32_t *free_ids;                         /* stack; top = free_ids[n_free - 1] */
    uint32_t n_free;
    uint32_t *refs; /* per page id; 0 = free */
    uint32_t *gen;  /* per page id: times taken (a page's contents are fixed while it is held) */
    uint64_t used;
} skvi_pool;

/* The pages of one (sequence, layer, kv-head, tier), in cache order. Every page is full
 * but the last, which holds tokens % page_tokens slots when that is not 0. */
typedef struct skvi_page_list {
    uint32_t *ids; /* page ids, SKVI_HOST_BIT marking host pages */
    uint32_t n, cap;
    uint32_t tokens;
} skvi_page_list;

/* Running key statistics of one (layer, kv-head), by position window (one window when
 * the scorer is not windowed), in double on the host. Only windows that hold a token
 * have a row, so memory follows the tokens, not the largest position. */
typedef struct skvi_key_stats {
    double *sum;      /* [n_windows][D] sum of k */
    double *sum_unit; /* [n_windows][D] sum of k / |k| */
    uint64_t *count;  /* [n_windows] */
    uint32_t *win;    /* [n_windows] each row's window (position / score_window), ascending */
    uint32_t n_windows;
} skvi_key_stats;

/* A head profile (hetero_profile.c). */
struct skv_hetero_profile {
    uint32_t layers, heads;
    skv_head_category *category; /* [layers][heads] */
    uint32_t *pivot;
    float *stability;
};

/* HeteroCache on one sequence (skv_seq_hetero). */
typedef struct skvi_hetero {
    skv_hetero_desc desc;
    skv_head_category *cat; /* [L][H] */
    uint32_t *pivot;        /* [L][H] */
    float *stability;       /* [L][H] */
    uint32_t k;             /* desc.top_k */
    uint32_t *ref, *ref_n;  /* [L][H][k], [L][H]: the pivots' reference sets (positions, ascending) */
    float *ref_w;           /* [L][H][k]: their attention weights */
    uint32_t *now, *now_n;  /* [L][H][k], [L][H]: the last check's sets, read back without a wait */
    float *now_w;           /* [L][H][k] */
    cl_event *now_read;     /* [L]: that read (NULL: none pending) */
    uint64_t *steps;        /* [L]: decode steps seen */
    uint64_t *share;        /* [L][H]: a satellite's device share in tokens (its last compression's) */
    int32_t **pos;          /* [L]: every appended position, in append order (the satellites' F16 order) */
    size_t *pos_n, *pos_cap;
    skv_tier res_tier;      /* the satellites' resident copies: the most precise ADA tier of the cache */
    uint32_t **res;         /* [L][H]: a satellite's resident tokens (their F16 list indices), in the
                             * resident list's slot order (as many as that list holds) */
    size_t *res_cap;        /* [L][H] */
    uint32_t *piv;          /* [L][H]: each layer's pivots first (n_piv of them), the drift check's rows */
    uint32_t *n_piv;        /* [L] */
    cl_mem piv_mem;         /* piv on the device */
    float **pscore;         /* [L][H]: a pivot's scores at the last compression (NULL: none yet), */
    uint32_t *pscore_n;     /* [L][H]  over its first pscore_n tokens */
} skvi_hetero;

/* A calibration (skv_hetero_calibrate_begin): per layer, the top-k sets of up to
 * max_steps steps on the device. */
typedef struct skvi_calib {
    skv_hetero_desc desc;
    cl_mem *sets;    /* [L]: [max_steps][H][k] uint */
    cl_mem *counts;  /* [L]: [max_steps][H] uint */
    uint32_t *steps; /* [L]: steps recorded */
    uint64_t *extra; /* [L]: steps past max_steps, ignored */
} skvi_calib;

/* Decode's buffers (host/decode_ws.c), per cache: grown geometrically, never shrunk,
 * reused by every call, so that after warm-up a decode step creates no OpenCL object
 * (skv_cache_stats.decode_cl_objects). The block tables of all tiers go to the device
 * in one write from a host staging slot laid out as the device table:
 * [tier][indptr | indices | lens], each region aligned for its sub-buffer, then the
 * host queries of a host call (one write command per call in all). The queue is
 * in order, so the device buffers are reused safely. A staging slot is reused once the
 * write that read it has run: a host call waits on its reads; an interop call's slot
 * is fenced by the call's last event, and while every slot's fence is pending (a
 * runtime queued many calls behind an unsignalled event) a new slot is added: the
 * host never waits. */
typedef struct skvi_stage {
    uint32_t *words;
    size_t cap;     /* in words */
    cl_event fence; /* NULL: free */
} skvi_stage;
enum {
    SKVI_WS_PARTIALS,
    SKVI_WS_TABLES, /* ADA query tables */
    SKVI_WS_ML,     /* per q-head (max, sum) */
    SKVI_WS_OUT,    /* host outputs */
    SKVI_WS_LOGITS, /* + tier: kept logits */
    SKVI_WS_COUNT = SKVI_WS_LOGITS + SKV_TIER_COUNT
};
typedef struct skvi_decode_ws {
    cl_mem buf[SKVI_WS_COUNT];
    size_t bytes[SKVI_WS_COUNT];
    uint64_t cap_rows;                   /* (sequence, kv-head) rows of the tables */
    uint64_t cap_pages[SKV_TIER_COUNT];  /* page ids per tier (0: tier not enabled) */
    size_t off[SKV_TIER_COUNT][3];        /* regions in 32-bit words */
    size_t off_q, cap_q;                  /* then the host queries' region */
    size_t words;
    cl_mem table, sub[SKV_TIER_COUNT][3];
    skvi_stage *stage;
    size_t n_stage, cap_stage;
    float *host_logits;  /* skv_attention_logits: one tier's logits read back */
    size_t host_logits_cap;
    uint64_t calls, objects; /* decode calls; OpenCL objects they created */
} skvi_decode_ws;

/* A list's scores kept for RDR (score_cache.c): the leading `tokens` tokens' scores and
 * |k|^2, valid while the list still starts with the same page allocations (ids and
 * generations) and the sequence's score epoch has not moved on. */
typedef struct skvi_list_scores {
    float *score, *ksq;   /* by token index in the list */
    int32_t *pos;
    uint32_t *page, *gen; /* the pages they were read from */
    size_t cap_score, cap_ksq, cap_pos, cap_page, cap_gen;
    uint32_t tokens, n_pages;
    uint64_t epoch;
} skvi_list_scores;

typedef struct skvi_seq {
    int live;
    uint64_t *len;         /* tokens appended per layer */
    skvi_page_list *lists; /* [layer][kv_head][tier] */
    /* scorers with key statistics: stats [layer][kv_head]; tokens appended but not yet
     * in the statistics are the last pending_n[layer] of each F16 list, with these
     * positions (added before anything can move them: skvi_stats_flush) */
    skvi_key_stats *stats;
    int32_t **pending_pos;
    uint32_t *pending_n, *pending_cap;
    int64_t *next_pos; /* per layer: the last appended position + 1 (TriAttention's t0) */
    /* SnapKV's observation windows per layer (NULL until skv_seq_observe_window) */
    float **snap_q;      /* [n][q_heads][D] */
    int32_t **snap_pos;  /* [n] */
    uint32_t *snap_n;
    /* observed attention: per layer [kv_heads][cap] accumulated probability by position */
    cl_mem *obs_acc;
    uint32_t *obs_cap;
    uint32_t **obs_from;  /* per layer [obs_cap]: obs_steps when the token at each position arrived */
    uint32_t *obs_steps;  /* per layer: decode steps that observed the sequence */
    uint64_t *rdr_mark; /* per layer: tokens appended when RDR last ran */
    cl_event *rdr_gate; /* per layer: the append a deferred compression waits for (NULL: none; rdr_defer.c) */
    cl_event moved;     /* the last page move of this sequence's pages (NULL: none pending) */
    skvi_hetero *hetero; /* NULL: HeteroCache does not run on the sequence */
    skvi_list_scores *kept_scores; /* [layer][kv_head][tier] (NULL until RDR first scores) */
    uint64_t rdr_runs;             /* compressions of the sequence; the score epoch is rdr_runs / score_refresh */
    skvi_calib *calib;   /* NULL: no calibration open */
} skvi_seq;

struct skv_cache {
    skv_context *ctx;
    skv_cache_desc desc;
    uint32_t group; /* q_heads / kv_heads */
    skvi_pool pools[SKV_TIER_COUNT][SKV_MEM_COUNT];
    uint64_t budget[SKV_MEM_COUNT];
    uint64_t allocated[SKV_MEM_COUNT];

    skvi_seq *seqs;
    uint32_t seq_cap;

    cl_kernel k_append;
    cl_kernel k_decode[SKV_TIER_COUNT]; /* per enabled tier, the variant below */
    cl_kernel k_merge;

    /* ADA tiers (enabled ones only) */
    skv_ref_ada_params ada[SKV_TIER_COUNT];
    cl_mem ada_params[SKV_TIER_COUNT]; /* the tables the kernels read (skvi_ada_pack_params) */
    cl_mem signs;                      /* [layer][kv_head][D] Hadamard signs */
    cl_kernel k_encode[SKV_TIER_COUNT];
    cl_kernel k_inv_norms, k_key_stats;  /* score.cl */
    cl_kernel k_score[SKV_TIER_COUNT];
    cl_kernel k_tri[SKV_TIER_COUNT];
    cl_kernel k_keys[SKV_TIER_COUNT]; /* dense keys for SnapKV's GEMM */
    cl_kernel k_snap_rows, k_snap_vote;
    cl_kernel k_observe[SKV_TIER_COUNT];
    cl_kernel k_logits[SKV_TIER_COUNT]; /* decode kernels that keep logits (skv_attention_logits) */
    cl_kernel k_slot_copy[SKV_TIER_COUNT]; /* RDR's compaction */
    cl_kernel k_rdr_search;                /* RDR's solver on the device */
    size_t rdr_wg;                         /* its work-group size: 256, or what the kernel allows (>= 8) */
    uint64_t rdr_waits;                    /* solver launches (each a host wait), over every compression */
    uint64_t compressions, compress_waits; /* RDR runs; their host waits (statistics, scores, positions, steps) */
    /* the queue compression reads, scores and solves on: the compute queue, or the
     * context's background queue while a deferred compression runs (rdr_defer.c) */
    cl_command_queue rq;
    uint32_t deferred;       /* (sequence, layer)s with a deferred compression pending */
    double *q_energy;        /* RDR: per (layer, kv-head), the sum of scale^2 |q|^2 (rdr_model.c) */
    uint64_t *q_seen;        /* and the queries summed */
    cl_kernel k_q_energy;    /* interop decode calls' queries: their running means on the device, */
    cl_mem q_dev;            /* [layer][kv_head][mean, count] (NULL until the first) */
    float *q_dev_host;       /* read back by each compression */
    uint32_t *q_dev_calls;   /* per layer: interop decode calls (every 16th is measured) */
    uint64_t deferred_runs;  /* deferred compressions that completed */
    cl_event caller_hold;    /* the last interop call whose work waits for the caller's events */
    cl_kernel k_transcode[SKV_TIER_COUNT][SKV_TIER_COUNT]; /* [from][to]: to a lower ADA tier */
    float *query_mean, *query_abs; /* TriAttention statistics (copied from the desc) */
    cl_kernel k_query[SKV_TIER_COUNT];
    float ada_logit_correction[SKV_TIER_COUNT]; /* factor on ADA logits (1: none; see ada.c) */
    skv_decode_params decode[SKV_TIER_COUNT]; /* per tier: the variant its decode kernels run */

    cl_event transfer_pending; /* last page move; compute work waits for it */
    cl_event last_decode[2];   /* first and last kernel of the last decode (profiling only) */
    skvi_decode_ws ws; /* decode's buffers, kept from call to call */

    /* HeteroCache: the top-k kernel, a step's attention rows [H][positions] and the
     * top-k sets [H][k] with their counts, grown on demand */
    cl_kernel k_topk, k_topk_gather;
    cl_mem h_rows, h_sets, h_counts, h_weights;
    cl_mem heads_all; /* [kv_heads]: 0 .. kv_heads - 1, the observe kernel's rows for every head */
    size_t h_rows_bytes, h_sets_bytes, h_counts_bytes, h_weights_bytes;
    skv_hetero_stats hstats;
};

/* parts.c: what a cache and its sequences hold beyond pages (ADA tables, kernels,
 * scorers' state, HeteroCache, RDR), each part's hooks (NULL: none), run in table order
 * on creation and in reverse on release. */
typedef struct skvi_part {
    const char *name;
    skv_status (*cache_init)(skv_cache *c);
    void (*cache_release)(skv_cache *c);
    skv_status (*seq_init)(skv_cache *c, skvi_seq *s); /* a new sequence */
    skv_status (*seq_fork)(skv_cache *c, skvi_seq *dst, const skvi_seq *src);
    void (*seq_release)(skv_cache *c, skvi_seq *s);
} skvi_part;
extern const skvi_part skvi_parts[];
extern const size_t skvi_part_count;

/* pool.c */
skv_status skvi_pool_init(skv_cache *c, skvi_pool *p, skv_memory mem, uint64_t page_bytes);
void skvi_pool_release(skv_cache *c, skvi_pool *p);
/* Makes n pages available (growing by whole chunks within the budget) without taking
 * them: after SKV_OK, n calls of skvi_pool_take succeed. */
skv_status skvi_pool_reserve(skv_cache *c, skvi_pool *p, uint32_t n);
uint32_t skvi_pool_take(skvi_pool *p);
void skvi_pool_ref(skvi_pool *p, uint32_t id);
void skvi_pool_unref(skvi_pool *p, uint32_t id);
/* The chunk buffer holding page `id` and the page's byte offset in it. */
cl_mem skvi_pool_locate(const skvi_pool *p, uint32_t id, size_t *offset);
/* Binds the SKV_POOL_PARAMS arguments (8 buffers + pages_per_chunk) next. */
void skvi_pool_bind(skvi_args *a, const skvi_pool *p);

/* decode_ws.c */
/* Buffer i of the workspace, at least `bytes` (poisoned when new, under SKV_DEBUG_POISON). */
skv_status skvi_ws_buffer(skv_cache *c, int i, size_t bytes, cl_mem *out);
/* A free staging slot for tables of `rows` rows and pages[t] page ids per tier, and
 * q_bytes of host queries (at word off_q): the table's capacity grown (it and its
 * sub-buffers recreated) when short. */
skv_status skvi_ws_stage(skv_cache *c, uint64_t rows, const uint64_t *pages, size_t q_bytes, uint32_t *slot);
/* Enqueues the write of the slot's first `words` words to the table (no event). */
skv_status skvi_ws_upload(skv_cache *c, uint32_t slot, size_t words);
/* The slot is reused only once `ev` completed (retained), or now that the queue ran
 * dry (ev NULL: the caller waited on the queue). */
void skvi_ws_fence(skv_cache *c, uint32_t slot, cl_event ev);
void skvi_ws_release(skv_cache *c);

/* ada.c */
skv_status skvi_ada_init(skv_cache *c);
/* Build defines of an ADA tier's kernels. */
void skvi_ada_defines(const skv_cache *c, skv_tier t, char *out, size_t n);
size_t skvi_ada_table_floats(const skv_cache *c, skv_tier t);
void skvi_ada_release(skv_cache *c);
/* The identity of tier t's codebook (a hash of the tables its kernels read; 0 for F16
 * or a tier the cache lacks): caches exchange ADA pages only when theirs agree. */
uint64_t skvi_ada_codebook(const skv_cache *c, skv_tier t);

/* key_stats.c: the running key statistics */
int skvi_scorer_has_stats(const skv_cache *c);
skv_status skvi_stats_alloc(skv_cache *c, skvi_seq *s);
void skvi_stats_release(skv_cache *c, skvi_seq *s);
skv_status skvi_stats_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src);
/* Room for n more pending positions of `layer` (before an append commits). */
skv_status skvi_stats_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n);
void skvi_stats_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n);
/* Adds every pending token of `layer` (~0u: of every layer) to the statistics (reads keys
 * back on c->rq: waits). */
skv_status skvi_stats_flush(skv_cache *c, skvi_seq *s, uint32_t layer);
/* The statistics of (layer, head) as floats: rows 0..nw-1 the means (one row, the global
 * mean, unless windowed), row nw the unit mean; *win_out the rows' windows, ascending
 * ({0} unless windowed). The caller frees both. */
float *skvi_stats_vectors(skv_cache *c, const skvi_seq *s, uint32_t layer, uint32_t head, uint32_t *nw_out,
                          uint32_t **win_out);

/* score_snapkv.c: SnapKV's observation windows and scores */
skv_status skvi_snap_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src);
void skvi_snap_release(skv_cache *c, skvi_seq *s);
skv_status skvi_snap_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held, float *scores);

/* score_observed.c: observed attention; accumulators covering positions < need (grown
 * before an append commits), fork copies, release, and the scores of `held` tokens at
 * `positions` */
/* The observed scorer and HeteroCache keep state per position (accumulators, attention
 * rows), so a layer's positions may run at most SKVI_POSITION_SPAN_RATIO times ahead of
 * the tokens appended to it, or up to SKVI_POSITION_SPAN_MIN: memory follows the tokens.
 * skvi_position_span(n) is the largest position + 1 allowed after n tokens. */
#define SKVI_POSITION_SPAN_RATIO 4
#define SKVI_POSITION_SPAN_MIN 65536
static inline int64_t skvi_position_span(uint64_t tokens)
{
    const uint64_t span = tokens * SKVI_POSITION_SPAN_RATIO;
    return span > SKVI_POSITION_SPAN_MIN ? (int64_t)span : SKVI_POSITION_SPAN_MIN;
}
skv_status skvi_obs_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, int64_t need);
skv_status skvi_obs_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src);
void skvi_obs_release(skv_cache *c, skvi_seq *s);
/* An append's positions arrive at the layer's current step count (after it commits). */
void skvi_obs_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n);
skv_status skvi_observed_scores(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, size_t held,
                                const int32_t *positions, float *scores);

/* score_cache.c: the scores RDR keeps per list. load: from[t] (per tier list of
 * (layer, kv_head)) is how many leading tokens have kept scores, copied into out/ksq in
 * cache order (tier after tier), with |k|^2 and positions. set: all n of one list as it is
 * now (after a compression packed it; n other than its count keeps none). A fork keeps
 * its parent's (the same statistics). */
skv_status skvi_kept_scores_load(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, float *out, float *ksq,
                                 int32_t *pos, uint32_t *from);
skv_status skvi_kept_scores_set(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, skv_tier tier,
                                const float *score, const float *ksq, const int32_t *pos, uint32_t n);
skv_status skvi_kept_scores_copy(skv_cache *c, skvi_seq *dst, const skvi_seq *src);
void skvi_kept_scores_release(skv_cache *c, skvi_seq *s);
/* Export and import (seq_export.c): how many leading tokens of list i keep valid scores
 * now; and a list's first n kept scores (any alignment) over its current pages. */
uint32_t skvi_kept_scores_valid(const skv_cache *c, const skvi_seq *s, size_t i);
skv_status skvi_kept_scores_put(skv_cache *c, skvi_seq *s, size_t i, const void *score, const void *ksq,
                                const void *pos, uint32_t n);

/* score.c: the scorers' kernels and the dispatch */
skv_status skvi_score_init(skv_cache *c);
void skvi_score_release(skv_cache *c);
/* skv_seq_scores with another scorer (one the cache's kernels serve: knorm always);
 * energy (NULL: not wanted) receives each held token's |k|^2 in the same order, from
 * the same pass for the key-statistics scorers (knorm .. streaming), else from a knorm
 * pass. deferred (NULL: the call waits): those scorers, given room for every held token,
 * leave their reads in flight and set *deferred to 1 (the caller waits on the queue);
 * others wait and set it to 0. */
skv_status skvi_scores(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, skv_scorer scorer, float *out,
                       size_t capacity, size_t *count, float *energy, int *deferred);
/* RDR's scores of every held token into out[held] and ksq[held], in flight when
 * *deferred: the key-statistics scorers score only tokens from[t] on of each tier's list
 * (the others' kept scores are in out already; *kept 1), the others everything (*kept
 * 0, from ignored). */
skv_status skvi_scores_rdr(skv_cache *c, skv_seq_id seq, uint32_t layer, uint32_t kv_head, float *out, float *ksq,
                           size_t held, const uint32_t *from, int *deferred, int *kept);
/* Whether RDR keeps this cache's scores (the key-statistics scorers). */
int skvi_scores_kept(const skv_cache *c);

/* rdr.c: the kernels, and RDR on one layer (or all: ~0u) of a sequence; all or nothing */
skv_status skvi_rdr_init(skv_cache *c);
void skvi_rdr_release(skv_cache *c);
skv_status skvi_compress(skv_cache *c, skv_seq_id seq, skvi_seq *s, uint32_t only_layer);

/* rdr_model.c: the key-error weight of RDR's distortion from the queries seen */
#define SKVI_KAPPA_DEFAULT 8.0 /* kappa of a (layer, kv-head) that has seen no query */
/* The share of a quantised token's attention-mass inflation that is error: the softmax
 * renormalises what the quantised tokens gain together, leaving their shift against the
 * tokens kept exact. 1/4: measured on the real model's streaming loss, two texts, where
 * the full kappa / 2 priced key error too high (docs/rdr.md, issue 26). */
#define SKVI_KAPPA_SHARE 0.25
skv_status skvi_rdr_model_init(skv_cache *c);
void skvi_rdr_model_release(skv_cache *c);
/* rows x q_heads host queries of `layer` at logit scale `scale` into the running means. */
void skvi_rdr_note_queries(skv_cache *c, uint32_t layer, skv_dtype dtype, const void *q, uint32_t rows, float scale);
/* The same for an interop call's device queries: every 16th call per layer, on the
 * compute queue after the call's work (no wait; failures only skip the sample). */
void skvi_rdr_note_queries_cl(skv_cache *c, uint32_t layer, skv_dtype dtype, cl_mem q, size_t q_off, uint32_t rows,
                              float scale);
/* Enqueues the read of the device means into the host's on c->rq (a compression's first
 * wait completes it). */
skv_status skvi_rdr_model_fetch(skv_cache *c);
/* kappa / 2 for (layer, head) whose candidates' mean |k|^2 is mean_ksq. */
double skvi_rdr_key_weight(const skv_cache *c, uint32_t layer, uint32_t head, double mean_ksq);

/* rdr_defer.c: compression deferred from skv_append_cl */
/* Automatic compression: `slack` at or above this turns it off in effect (compression when
 * the caller asks), and then no room is reserved for the tokens appended in between. */
#define SKVI_SLACK_AUTO (1u << 16)
/* Whether `layer` of the sequence must be compressed now (slack tokens since it last ran:
 * one more F16 token could take it past its budget), and whether an interop append
 * should start a deferred compression (half of them: it runs in a later call, before the
 * layer is due). */
int skvi_rdr_due(const skv_cache *c, const skvi_seq *s, uint32_t layer);
int skvi_rdr_soon(const skv_cache *c, const skvi_seq *s, uint32_t layer);
/* The layer's deferred compression waits for `append` (retained; replaces the last). */
void skvi_rdr_gate(skv_cache *c, skvi_seq *s, uint32_t layer, cl_event append);
/* Drops the deferred compression of `layer` (~0u: of every layer) of the sequence. */
void skvi_rdr_ungate(skv_cache *c, skvi_seq *s, uint32_t layer);
/* Notes an interop call whose work (ending with `done`) waits for num_wait caller events:
 * until it completed, a due append does not wait on the queue (the caller may set them
 * only after that append returns), and its compression stays deferred. */
void skvi_rdr_note_caller_waits(skv_cache *c, cl_uint num_wait, cl_event done);
/* Whether an append may wait for the compute queue (no call waiting on the caller). */
int skvi_rdr_may_wait(skv_cache *c);
/* Runs every deferred compression whose append completed (no wait on the compute
 * queue); a failure leaves its layer as it was, to be retried at its next append. */
void skvi_rdr_run_deferred(skv_cache *c);
/* skv_rdr_solve on the device (cl/rdr.cl); the choices equal the host solver's. */
skv_status skvi_rdr_solve_device(skv_cache *c, const skv_rdr_problem *p, uint8_t *choice, int *rc);
/* The same for n problems of one cache (the same tiers, codec errors and rates) at once:
 * one launch and one wait for all of them; rcs[i] as skv_rdr_solve_with's. */
skv_status skvi_rdr_solve_many(skv_cache *c, const skv_rdr_problem *const *probs, uint8_t *const *choices, int *rcs,
                               size_t n);

/* hetero.c */
/* The top-k kernels (cl/topk.cl), built on first use. */
skv_status skvi_hetero_kernels(skv_cache *c);
/* hetero_profile.c: a settings check with the caller's name; an empty profile. */
skv_status skvi_hetero_check_desc(char *err, const skv_hetero_desc *d, const char *fn);
skv_hetero_profile *skvi_hetero_profile_new(uint32_t layers, uint32_t heads);
/* A profile file's bytes (not NUL-terminated; at most SKVI_PROFILE_MAX_BYTES), parsed
 * and checked as skv_hetero_profile_load does, messages naming `name`; the step from bytes
 * to a profile alone, for the fuzz harness. */
#define SKVI_PROFILE_MAX_BYTES (1u << 26)
skv_status skvi_hetero_profile_parse(const char *bytes, size_t len, const char *name, skv_hetero_profile **out);
/* Decode hooks for the sequences of a batch that calibrate or run HeteroCache: before
 * the plan, processes the previous check's sets (drift, retrieval); after the merge,
 * computes this step's top-k sets from the kept logits (observe rows, cl/topk.cl). */
int skvi_hetero_wants_logits(const skvi_seq *s, uint32_t layer);
void skvi_hetero_before_decode(skv_cache *c, skvi_seq *s, uint32_t layer);
/* rows: logits-derived attention of sequence b of the batch (the observe kernel's
 * arguments are set but acc, acc_cap), enqueued by `observe` per tier */
/* Attention rows of sequence b into acc[rows][acc_cap] by position, for the kv-heads
 * heads[head_off .. head_off + rows) (a device array). */
typedef cl_int (*skvi_observe_fn)(void *arg, uint32_t b, cl_mem acc, cl_uint acc_cap, cl_mem heads, cl_uint head_off,
                                  cl_uint rows);
skv_status skvi_hetero_after_decode(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe,
                                    void *arg);
/* Whether decode may read entry j of list i now (not in flight); counts skipped pages. */
skv_status skvi_hetero_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n);
void skvi_hetero_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n);
/* RDR's per-head budgets (F16 token equivalents) of a HeteroCache sequence's layer, and
 * whether RDR compresses the head (anchors only); budgets[h] of satellites are their
 * device shares. */
skv_status skvi_hetero_budgets(skv_cache *c, skvi_seq *s, uint32_t layer, uint64_t layer_tokens, uint64_t *per_head);
int skvi_hetero_rdr_head(const skvi_seq *s, const skv_cache *c, uint32_t layer, uint32_t head);
/* Keeps each satellite of the layer within its device share (after a compression). */
skv_status skvi_hetero_place(skv_cache *c, skvi_seq *s, uint32_t layer);
void skvi_hetero_release(skv_cache *c, skvi_seq *s);
void skvi_calib_release(skv_cache *c, skvi_seq *s);
skv_status skvi_hetero_cache_init(skv_cache *c);
void skvi_hetero_cache_release(skv_cache *c);
void skvi_hetero_seq_release(skv_cache *c, skvi_seq *s);

/* transfer.c: moves entries (list i, entry j) of a sequence to `to`; all or nothing.
 * The copies wait for compute work already enqueued; *last (retained, may be NULL)
 * is the last copy. track: 1 sets the sequence's move event (decode waits for it), 0
 * leaves it (HeteroCache: decode skips in-flight pages instead). */
skv_status skvi_move_entries(skv_cache *c, skvi_seq *s, const uint32_t *list, const uint32_t *entry, uint32_t n,
                             skv_memory to, int track, cl_event *last, const char *fn);

/* decode_kernels.c */
/* The append, decode (the tuning database's variant per tier) and merge kernels. */
skv_status skvi_cache_build_kernels(skv_cache *c);
void skvi_cache_release_kernels(skv_cache *c);
/* The tier's decode kernel that keeps every logit (OBSERVE), built on first use. */
skv_status skvi_cache_logits_kernel(skv_cache *c, skv_tier tier, cl_kernel *out);
/* The tier's observe kernel (cl/observe.cl), built on first use. */
skv_status skvi_cache_observe_kernel(skv_cache *c, skv_tier tier, cl_kernel *out);
/* seq.c */
skv_status skvi_seq_get(const skv_cache *c, skv_seq_id id, const char *fn, skvi_seq **out);
/* A free slot in the sequence table with its arrays allocated (not yet live). */
skv_status skvi_seq_new(skv_cache *c, const char *fn, skv_seq_id *id_out);
/* Enqueues the reads of the positions of (layer, kv_head)'s held tokens, in cache order,
 * into out[held] without a wait (the caller waits on the compute queue; work on it that
 * wrote the pages came first, and moves of the pages must be complete or waited for).
 * from (NULL: all): each tier's list from token from[t] on, out's other entries kept;
 * nothing past out[capacity - 1] is written. */
skv_status skvi_positions_enqueue(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t kv_head, int32_t *out,
                                  size_t capacity, const uint32_t *from);
/* Unreferences the pages and frees everything of a sequence (its slot becomes free). */
void skvi_seq_release(skv_cache *c, skvi_seq *s);
skvi_page_list *skvi_seq_list(const skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, skv_tier tier);
/* Lists per sequence, and the tier of list i. */
size_t skvi_list_count(const skv_cache *c);
#define SKVI_LIST_TIER(i) ((skv_tier)((i) % SKV_TIER_COUNT))
/* The pool holding a page-list entry of `tier`. */
skvi_pool *skvi_entry_pool(skv_cache *c, skv_tier tier, uint32_t entry);
skv_status skvi_list_reserve(skv_cache *c, skvi_page_list *l, uint32_t extra);
/* waits.c */
/* Merges pending page moves into a wait list for compute work; returns the list to
 * pass (the caller frees *owned when not NULL). Work that takes or writes pages
 * (seqs NULL) waits for the cache's last move: a page a copy still reads may be handed
 * out again. Decode only reads the pages of its sequences (seqs[n_seqs]) and waits for
 * their moves alone, so fetching one sequence overlaps decode of the others. */
skv_status skvi_compute_waits(skv_cache *c, const skv_seq_id *seqs, uint32_t n_seqs, cl_uint n_user,
                              const cl_event *user, cl_uint *n_out, const cl_event **out, cl_event **owned);
/* Compute work enqueued after this waits for the moves of seq's pages (a barrier). */
/* A command's execution status (CL_COMPLETE, CL_RUNNING, ...); negative when it failed.
 * When the status cannot be read it waits for the command (never calls a command done
 * that may still run), then CL_COMPLETE, or negative if that wait fails too. */
cl_int skvi_event_status(cl_event ev);
/* Before host memory that reads on q may still write is freed, after an error: waits
 * for q even if one wait fails. */
void skvi_drain(cl_command_queue q);
skv_status skvi_wait_moves(skv_cache *c, skv_seq_id seq);

#endif /* SKV_CACHE_INTERNAL_H */
