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
    double attention_s;     /* device time from each layer's q/k/v to its attention output
                             * (skv append + decode, and skv's compression work), summed */
    double forward_s;       /* wall time inside llm_forward */
} llm_session_stats;
skv_status llm_session_stats_get(llm_session *s, llm_session_stats *out);
/* Zeroes attention_s and forward_s (tokens/s of a phase). */
void llm_session_reset_timing(llm_session *s);

#endif
