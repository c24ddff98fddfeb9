/* A minimal Llama-architecture runtime on OpenCL with skv as its KV cache (issue 18,
 * docs/llama.md): weights from a GGUF file dequantised on the device, matrix products by
 * CLBlast, RMSNorm/RoPE/SwiGLU kernels of its own (llama.cl), and attention by skv's
 * public API only: every token's keys and values go in with skv_append_cl and every
 * query attends with skv_attention_decode_cl, on the runtime's own context and queue.
 *
 * A prompt is processed in chunks: one matrix product per weight per chunk, then, layer
 * by layer, each token of the chunk is appended and attends over what the cache holds
 * (causal by construction), so a compressed cache shapes every logit as it would in
 * decoding. Errors return an skv_status with a message in llm_last_error(). */
#ifndef SKV_EXAMPLES_LLAMA_H
#define SKV_EXAMPLES_LLAMA_H

#include <stdint.h>

#include "bpe.h"
#include "gguf.h"
#include "skv/skv_cl.h"

typedef struct llm_config {
    uint32_t layers, d_model, heads, kv_heads, head_dim, d_ff, vocab, context;
    float rope_theta, rms_eps;
} llm_config;

typedef struct llm_model llm_model;

/* The byte-level BPE tokenizer of the file's tokenizer.ggml.* keys (tokens, merges, and
 * token types when present) and its end-of-turn id (*eos, -1 without one).
 * SKV_ERR_INVALID_ARG without tokens or merges, or with an unreadable token_type array. */
skv_status llm_tokenizer_load(const gguf_file *f, bpe_vocab **out, int32_t *eos);

/* The calling thread's message for the last failure of an llm_ call. */
const char *llm_last_error(void);

/* Reads and checks the architecture ("llama"), the hyper-parameters and every tensor's
 * shape and type (F32, F16, Q8_0, Q4_1), then dequantises the weights to float32 on the
 * device of (cl_ctx, queue), which must be in-order; both are retained. The gguf file
 * may be closed afterwards. */
skv_status llm_model_load(const gguf_file *f, cl_context cl_ctx, cl_device_id device, cl_command_queue queue,
                          llm_model **out);
void llm_model_free(llm_model *m); /* NULL is fine */
const llm_config *llm_model_config(const llm_model *m);
uint64_t llm_model_weight_bytes(const llm_model *m); /* device bytes of the weights */

/* How the session's skv cache compresses (the runtime's policy flags). */
typedef struct llm_policy {
    skv_tier tier;       /* F16: dense; an ADA tier: every full page outside the first page
                          * (the sinks) and the recent window is quantised to it */
    float budget;        /* > 0: RDR under this fraction of F16 bytes, all tiers, `scorer` */
    skv_scorer scorer;   /* RDR's scorer (default keydiff) */
    uint32_t recent_window; /* tokens kept F16 at the end (default 128) */
    /* RDR only (budget > 0): */
    int drop_only;       /* tiers F16 alone: each token kept at F16 or dropped (eviction, as
                          * kvpress's presses), instead of F16, an ADA tier or drop */
    skv_budget_rule budget_rule; /* the budget's spread: uniform (default), pyramid (PyramidKV:
                          * by layer), adakv (AdaKV: by head within a layer) */
    uint32_t budget_context; /* 0: the budget is a share of the tokens appended so far
                          * (it grows with the sequence); N: a fixed cap of budget x the F16
                          * bytes of N tokens (skv_cache_desc.budget_bytes), the device
                          * memory a runtime provisions for a sequence of N tokens */
    const float *query_mean, *query_abs; /* the triattention scorer's query statistics,
                          * every layer (skv_cache_desc.query_mean/query_abs; copied at
                          * creation): llm_capture_query_stats makes them from a capture */
    int prefix;          /* the session's prefix comes from llm_session_load_prefix, which
                          * compresses it once (kvpress's protocol): appends never compress
                          * (slack 65536), and the snapkv scorer is allowed (the capture's
                          * window queries are its observation window) */
} llm_policy;
void llm_policy_init(llm_policy *p); /* dense */

/* One sequence being decoded: an skv cache on `skv` (which must have been created on the
 * model's cl_context, device and queue with skv_context_create_cl), its activations for
 * chunks of up to max_chunk tokens, and timing. */
typedef struct llm_session llm_session;
skv_status llm_session_create(llm_model *m, skv_context *skv, const llm_policy *policy, uint32_t max_chunk,
                              llm_session **out);
void llm_session_free(llm_session *s); /* NULL is fine */

/* Runs n tokens at the next positions (the session's length onwards), in chunks.
 * logits_last (vocab floats, or NULL) receives the last token's logits. With targets
 * (n ids, -1 for none), loss[i] = -log p(targets[i] | ids[..i]) and top[i] = the argmax
 * of token i's logits (either may be NULL). On an error the session is unusable (its
 * cache may hold part of a chunk) and must be freed. */
skv_status llm_forward(llm_session *s, const int32_t *ids, uint32_t n, float *logits_last, const int32_t *targets,
                       float *loss, int32_t *top);

typedef struct llm_session_stats {
    uint64_t tokens;        /* positions run */
    uint64_t kv_bytes;      /* device bytes of the cache's pages in use */
    uint64_t kv_bytes_dense;/* what the same tokens take as F16 pages */
    uint64_t held[SKV_TIER_COUNT]; /* tokens held per tier, over every layer and kv-head */
    double kv_peak_ratio;   /* the most device KV bytes over the F16 bytes of the tokens
                             * appended, after any append from kv_peak_from tokens on (RDR:
                             * the length from which its budget holds the floor, skv.h) */
    uint64_t kv_peak_from;
    double attention_s;     /* device time from each layer's q/k/v to its attention output
                             * (skv append + decode, and skv's compression work), summed */
    double forward_s;       /* wall time inside llm_forward */
} llm_session_stats;
skv_status llm_session_stats_get(llm_session *s, llm_session_stats *out);
/* Zeroes attention_s and forward_s (tokens/s of a phase). */
void llm_session_reset_timing(llm_session *s);

/* ---- captured prefixes (skv longeval) ------------------------------------------------
 * A dense prefill run once, its keys and values captured, then loaded into sessions of
 * other policies, each compressing the same prefix once: the protocol of RULER-style
 * evaluations (kvpress), where a policy sees exactly the dense model's cache and never
 * its own errors during the prefill. */
typedef struct llm_capture {
    uint32_t layers, kv_heads, q_heads, head_dim;
    uint32_t tokens;   /* positions 0 .. tokens-1 */
    uint32_t capacity; /* tokens k and v have room for */
    float **k, **v;    /* per layer: [tokens][kv_heads][head_dim] float32, keys after RoPE (as
                        * skv_append_cl received them; the cache stores them as fp16) */
    uint32_t window;   /* queries kept per layer: those of the last `window` positions */
    uint32_t n_window; /* held: min(tokens, window) */
    float **q;         /* per layer: [n_window][q_heads][head_dim] float32, after RoPE */
    int32_t *q_pos;    /* [n_window]: their positions, ascending (the same for every layer) */
} llm_capture;

/* on: from now on, every chunk's keys and values (read back from the device after the
 * RoPE kernel, per layer) and the queries of the last q_window positions (0..4096; 0:
 * none) are recorded on the host. The session must hold no tokens yet (SKV_ERR_INVALID_ARG
 * otherwise): a capture covers positions 0 onwards. A capture held from before is freed.
 * off: recording stops; what was recorded stays. Host memory: 8 * kv_heads * head_dim
 * bytes per token and layer (SmolLM2-135M: 46 KiB a token). */
skv_status llm_session_capture(llm_session *s, int on, uint32_t q_window);
/* The session's capture (NULL when none); valid until the next llm_ call on the session. */
const llm_capture *llm_session_captured(const llm_session *s);
/* Detaches the capture (NULL when none): the caller owns it, llm_capture_free frees it;
 * the session records nothing more. Waits for the session's queued work. */
llm_capture *llm_session_capture_take(llm_session *s);
void llm_capture_free(llm_capture *c); /* NULL is fine */
/* TriAttention's calibration from a capture's window queries (skv_query_stats per layer,
 * the model's RoPE): *mean [layers][q_heads][head_dim] and *abs_pair
 * [layers][q_heads][head_dim / 2], malloc'ed, for llm_policy.query_mean/query_abs.
 * SKV_ERR_INVALID_ARG when the capture holds no window queries. */
skv_status llm_capture_query_stats(const llm_model *m, const llm_capture *cap, float **mean, float **abs_pair);

/* Appends a capture's keys and values to an empty session with skv_append (host arrays,
 * positions 0 .. tokens-1, in pieces of at most 1024 tokens per layer), sets the
 * session's length to cap->tokens, then applies the policy's compression once: RDR
 * (policy.prefix must be set) gets the capture's window queries first with
 * skv_seq_observe_window (the snapkv scorer's observation window; for every scorer RDR's
 * query energy, as the library asks of a runtime that prefills outside skv), the
 * observed scorer gets them as decode steps (skv_attention_decode of the whole window
 * in one batch; unlike a causal prefill, each window query attends to the window's later
 * keys too), then skv_compress; a uniform tier quantises what llm_forward would have by
 * now (every full page but the first outside the recent window). SKV_ERR_INVALID_ARG
 * when the session holds tokens, the capture's shape is not the model's, it is empty or
 * longer than the model's context, or snapkv has no window. On an error after the first
 * append the session is unusable and must be freed. */
skv_status llm_session_load_prefix(llm_session *s, const llm_capture *cap);

#endif
