/* The Llama runtime of examples/llama (llama.h): loading, the forward pass, the cache
 * policy. It links skv's public API only. */
#define _POSIX_C_SOURCE 200809L
#include "llama.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <clblast_c.h>

/* llama.cl, embedded at build time (cmake/embed_kernels.cmake) */
extern const char llama_cl_source[];
extern const size_t llama_cl_source_len;

#define WG 64 /* llama.cl's row reductions, passed as -DWG */

static _Thread_local char last_error[512];

const char *llm_last_error(void) { return last_error; }

static skv_status fail(skv_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

static skv_status cl_fail(cl_int e, const char *what)
{
    return fail(SKV_ERR_OPENCL, "%s failed (OpenCL error %d)", what, (int)e);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the tokenizer ------------------------------------------------------------------- */

skv_status llm_tokenizer_load(const gguf_file *f, bpe_vocab **out, int32_t *eos)
{
    if (!f || !out || !eos)
        return fail(SKV_ERR_INVALID_ARG, "llm_tokenizer_load: NULL argument");
    *out = NULL;
    const char *const *tokens = NULL, *const *merges = NULL;
    uint64_t n_tokens = 0, n_merges = 0, n_types = 0;
    if (gguf_get_strings(f, "tokenizer.ggml.tokens", &tokens, &n_tokens) != GGUF_OK ||
        gguf_get_strings(f, "tokenizer.ggml.merges", &merges, &n_merges) != GGUF_OK)
        return fail(SKV_ERR_INVALID_ARG, "model: no byte-level BPE tokenizer (tokenizer.ggml.tokens/merges)");
    int32_t *types = NULL;
    if (gguf_find(f, "tokenizer.ggml.token_type")) {
        if (!(types = malloc(n_tokens * sizeof *types)))
            return fail(SKV_ERR_OUT_OF_MEMORY, "llm_tokenizer_load: out of memory");
        if (gguf_get_i32s(f, "tokenizer.ggml.token_type", types, n_tokens, &n_types) != GGUF_OK ||
            n_types != n_tokens) {
            free(types);
            return fail(SKV_ERR_INVALID_ARG, "model: tokenizer.ggml.token_type does not give one type per token");
        }
    }
    bpe_status bs = bpe_create(tokens, types, n_tokens, merges, n_merges, out);
    free(types);
    if (bs != BPE_OK)
        return fail(bs == BPE_ERR_NOMEM ? SKV_ERR_OUT_OF_MEMORY : SKV_ERR_INVALID_ARG, "model: the tokenizer: %s",
                    bpe_status_str(bs));
    uint32_t id = 0;
    *eos = gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &id) == GGUF_OK ? (int32_t)id : -1;
    return SKV_OK;
}

/* ---- the model ----------------------------------------------------------------------- */

enum { K_DEQ_Q4_1, K_DEQ_Q8_0, K_DEQ_F16, K_EMBED, K_RMS_NORM, K_ROPE, K_SILU, K_LOSS, K_GEMV, K_GEMV_ROWS, K_COUNT };
static const char *const kernel_names[K_COUNT] = {"dequant_q4_1", "dequant_q8_0", "dequant_f16",     "embed",
                                                  "rms_norm",     "rope_split",   "silu_mul", "next_token_loss", "gemv", "gemv_rows"};

typedef struct llm_layer {
    cl_mem attn_norm; /* [d] */
    cl_mem wqkv;      /* [d + 2 kv_dim][d]: q, k, v rows fused, one product per chunk */
    cl_mem wo;        /* [d][d] */
    cl_mem ffn_norm;  /* [d] */
    cl_mem wgu;       /* [2 ff][d]: gate rows, then up rows */
    cl_mem wdown;     /* [d][ff] */
} llm_layer;

struct llm_model {
    llm_config cfg;
    cl_context ctx;
    cl_device_id device;
    cl_command_queue queue;
    cl_program program;
    cl_kernel k[K_COUNT];
    cl_mem emb;      /* [vocab][d], also the output projection when tied */
    cl_mem out_w;    /* [vocab][d] (emb retained when tied) */
    cl_mem out_norm; /* [d] */
    llm_layer *layers;
    uint64_t weight_bytes;
    int cpu; /* a CPU device: decode's products use gemv_rows, else gemv */
};

const llm_config *llm_model_config(const llm_model *m) { return &m->cfg; }
uint64_t llm_model_weight_bytes(const llm_model *m) { return m->weight_bytes; }

static void release_mem(cl_mem *m)
{
    if (*m)
        clReleaseMemObject(*m);
    *m = NULL;
}

void llm_model_free(llm_model *m)
{
    if (!m)
        return;
    if (m->queue)
        clFinish(m->queue);
    if (m->layers)
        for (uint32_t l = 0; l < m->cfg.layers; l++) {
            llm_layer *L = &m->layers[l];
            release_mem(&L->attn_norm), release_mem(&L->wqkv), release_mem(&L->wo);
            release_mem(&L->ffn_norm), release_mem(&L->wgu), release_mem(&L->wdown);
        }
    free(m->layers);
    release_mem(&m->emb), release_mem(&m->out_w), release_mem(&m->out_norm);
    for (int i = 0; i < K_COUNT; i++)
        if (m->k[i])
            clReleaseKernel(m->k[i]);
    if (m->program)
        clReleaseProgram(m->program);
    if (m->queue)
        clReleaseCommandQueue(m->queue);
    if (m->device)
        clReleaseDevice(m->device);
    if (m->ctx)
        clReleaseContext(m->ctx);
    free(m);
}

static skv_status read_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    if (gguf_get_u32(f, key, out) != GGUF_OK)
        return fail(SKV_ERR_INVALID_ARG, "model: metadata %s is missing or not an integer", key);
    return SKV_OK;
}

static skv_status read_config(const gguf_file *f, llm_config *c)
{
    const char *arch = NULL;
    if (gguf_get_string(f, "general.architecture", &arch) != GGUF_OK)
        return fail(SKV_ERR_INVALID_ARG, "model: no general.architecture");
    if (strcmp(arch, "llama") != 0)
        return fail(SKV_ERR_UNSUPPORTED, "model: architecture \"%s\" (this runtime runs \"llama\")", arch);
    skv_status st;
    if ((st = read_u32(f, "llama.block_count", &c->layers)) || (st = read_u32(f, "llama.embedding_length", &c->d_model)) ||
        (st = read_u32(f, "llama.attention.head_count", &c->heads)) ||
        (st = read_u32(f, "llama.attention.head_count_kv", &c->kv_heads)) ||
        (st = read_u32(f, "llama.feed_forward_length", &c->d_ff)) ||
        (st = read_u32(f, "llama.context_length", &c->context)))
        return st;
    if (gguf_get_f32(f, "llama.rope.freq_base", &c->rope_theta) != GGUF_OK)
        c->rope_theta = 10000.0f; /* llama.cpp's default */
    if (gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &c->rms_eps) != GGUF_OK)
        return fail(SKV_ERR_INVALID_ARG, "model: no llama.attention.layer_norm_rms_epsilon");
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb || emb->n_dims != 2)
        return fail(SKV_ERR_INVALID_ARG, "model: no 2-D token_embd.weight");
    if (c->layers == 0 || c->layers > 1024 || c->heads == 0 || c->kv_heads == 0 || c->heads % c->kv_heads != 0 ||
        c->d_model == 0 || c->d_model % c->heads != 0 || c->d_ff == 0 || c->d_ff > (1u << 20) ||
        c->d_model > (1u << 16) || emb->ne[1] > (1u << 24) || emb->ne[1] == 0)
        return fail(SKV_ERR_INVALID_ARG,
                    "model: inconsistent hyper-parameters (%u layers, d_model %u, %u heads, %u kv-heads, ff %u)",
                    c->layers, c->d_model, c->heads, c->kv_heads, c->d_ff);
    c->head_dim = c->d_model / c->heads;
    c->vocab = (uint32_t)emb->ne[1];
    if (!(c->rope_theta > 1.0f) || !isfinite(c->rope_theta) || !(c->rms_eps > 0.0f) || !(c->rms_eps < 1.0f))
        return fail(SKV_ERR_INVALID_ARG, "model: RoPE base %g or RMSNorm epsilon %g out of range",
                    (double)c->rope_theta, (double)c->rms_eps);
    uint32_t rot = c->head_dim;
    if (gguf_get_u32(f, "llama.rope.dimension_count", &rot) == GGUF_OK && rot != c->head_dim)
        return fail(SKV_ERR_UNSUPPORTED, "model: RoPE over %u of %u dims (this runtime rotates all)", rot,
                    c->head_dim);
    if (c->head_dim != 64 && c->head_dim != 128 && c->head_dim != 256)
        return fail(SKV_ERR_UNSUPPORTED, "model: head_dim %u (skv caches 64, 128 or 256)", c->head_dim);
    if (c->context == 0)
        c->context = 4096;
    return SKV_OK;
}

/* The tensor `name` with rows of ne0 values and ne1 rows, of a type the device dequantises. */
static skv_status find_tensor(const gguf_file *f, const char *name, uint64_t ne0, uint64_t ne1,
                              const gguf_tensor **out)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        return fail(SKV_ERR_INVALID_ARG, "model: tensor %s is missing", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return fail(SKV_ERR_INVALID_ARG, "model: tensor %s is [%llu, %llu, %llu, %llu], expected [%llu, %llu]", name,
                    (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
                    (unsigned long long)t->ne[3], (unsigned long long)ne0, (unsigned long long)ne1);
    if (t->type != GGUF_F32 && t->type != GGUF_F16 && t->type != GGUF_Q8_0 &&
        t->type != GGUF_Q4_1)
        return fail(SKV_ERR_UNSUPPORTED, "model: tensor %s has ggml type %u (F32, F16, Q8_0 and Q4_1 run)", name,
                    t->type);
    *out = t;
    return SKV_OK;
}

static skv_status new_buffer(llm_model *m, size_t floats, cl_mem *out)
{
    cl_int e;
    *out = clCreateBuffer(m->ctx, CL_MEM_READ_WRITE, floats * sizeof(float), NULL, &e);
    if (e != CL_SUCCESS)
        return cl_fail(e, "clCreateBuffer (weights)");
    m->weight_bytes += floats * sizeof(float);
    return SKV_OK;
}

/* Writes tensor t, as float32, into dst from float dst_offset on: F32 directly, the
 * others through a staging buffer of the raw blocks and a dequantising kernel. */
static skv_status upload(llm_model *m, const gguf_tensor *t, cl_mem dst, uint64_t dst_offset)
{
    cl_int e;
    if (t->type == GGUF_F32) {
        e = clEnqueueWriteBuffer(m->queue, dst, CL_TRUE, dst_offset * 4, t->n_elements * 4, t->data, 0, NULL, NULL);
        return e == CL_SUCCESS ? SKV_OK : cl_fail(e, "clEnqueueWriteBuffer (weights)");
    }
    cl_mem raw = clCreateBuffer(m->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, t->n_bytes, (void *)t->data, &e);
    if (e != CL_SUCCESS)
        return cl_fail(e, "clCreateBuffer (staging)");
    cl_kernel k = m->k[t->type == GGUF_Q4_1 ? K_DEQ_Q4_1 : t->type == GGUF_Q8_0 ? K_DEQ_Q8_0 : K_DEQ_F16];
    cl_uint n = (cl_uint)(t->type == GGUF_F16 ? t->n_elements : t->n_elements / 32);
    cl_ulong off = dst_offset;
    e = clSetKernelArg(k, 0, sizeof raw, &raw);
    e |= clSetKernelArg(k, 1, sizeof dst, &dst);
    e |= clSetKernelArg(k, 2, sizeof off, &off);
    e |= clSetKernelArg(k, 3, sizeof n, &n);
    size_t global = ((size_t)n + 63) / 64 * 64;
    if (e == CL_SUCCESS)
        e = clEnqueueNDRangeKernel(m->queue, k, 1, NULL, &global, NULL, 0, NULL, NULL);
    if (e == CL_SUCCESS)
        e = clFinish(m->queue); /* the staging buffer goes now: peak memory is one tensor */
    clReleaseMemObject(raw);
    return e == CL_SUCCESS ? SKV_OK : cl_fail(e, "dequantising a weight");
}

/* A buffer of `rows` rows of `cols` floats filled from the named tensors, in order. */
static skv_status load_rows(llm_model *m, const gguf_file *f, const char *const *names, int n_names,
                            const uint64_t *rows, uint64_t cols, cl_mem *out)
{
    uint64_t total = 0;
    const gguf_tensor *t[3] = {NULL, NULL, NULL};
    for (int i = 0; i < n_names; i++) {
        skv_status st = find_tensor(f, names[i], cols, rows[i], &t[i]);
        if (st)
            return st;
        total += rows[i];
    }
    skv_status st = new_buffer(m, total * cols, out);
    for (int i = 0, r = 0; st == SKV_OK && i < n_names; r += (int)rows[i], i++)
        st = upload(m, t[i], *out, (uint64_t)r * cols);
    return st;
}

static skv_status build_program(llm_model *m)
{
    cl_int e;
    const char *src = llama_cl_source;
    m->program = clCreateProgramWithSource(m->ctx, 1, &src, &llama_cl_source_len, &e);
    if (e != CL_SUCCESS)
        return cl_fail(e, "clCreateProgramWithSource (llama.cl)");
    char options[64];
    snprintf(options, sizeof options, "-cl-std=CL1.2 -DWG=%d", WG);
    e = clBuildProgram(m->program, 1, &m->device, options, NULL, NULL);
    if (e != CL_SUCCESS) {
        char log[400] = "";
        clGetProgramBuildInfo(m->program, m->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        return fail(SKV_ERR_BUILD, "building llama.cl failed (OpenCL error %d): %s", (int)e, log);
    }
    for (int i = 0; i < K_COUNT; i++) {
        m->k[i] = clCreateKernel(m->program, kernel_names[i], &e);
        if (e != CL_SUCCESS)
            return cl_fail(e, kernel_names[i]);
    }
    return SKV_OK;
}

skv_status llm_model_load(const gguf_file *f, cl_context cl_ctx, cl_device_id device, cl_command_queue queue,
                          llm_model **out)
{
    if (!f || !cl_ctx || !device || !queue || !out)
        return fail(SKV_ERR_INVALID_ARG, "llm_model_load: NULL argument");
    *out = NULL;
    llm_model *m = calloc(1, sizeof *m);
    if (!m)
        return fail(SKV_ERR_OUT_OF_MEMORY, "llm_model_load: out of memory");
    clRetainContext(cl_ctx), clRetainDevice(device), clRetainCommandQueue(queue);
    m->ctx = cl_ctx, m->device = device, m->queue = queue;
    skv_status st = read_config(f, &m->cfg);
    const llm_config *c = &m->cfg;
    cl_device_type type = 0;
    clGetDeviceInfo(device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    m->cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    if (m->cpu) {
        /* CLBlast's direct GEMM (its choice below a size threshold) runs at half the speed
         * of its indirect one on PoCL's CPU device (docs/perf.md): always indirect there */
        const char *names[1] = {"XGEMM_MIN_INDIRECT_SIZE"};
        const size_t vals[1] = {0};
        CLBlastOverrideParameters(device, "GemmRoutine", CLBlastPrecisionSingle, 1, names, vals);
    }
    if (st == SKV_OK)
        st = build_program(m);
    if (st == SKV_OK && !(m->layers = calloc(c->layers, sizeof *m->layers)))
        st = fail(SKV_ERR_OUT_OF_MEMORY, "llm_model_load: out of memory");
    const uint64_t d = c->d_model, kvd = (uint64_t)c->kv_heads * c->head_dim, ff = c->d_ff;
    for (uint32_t l = 0; st == SKV_OK && l < c->layers; l++) {
        llm_layer *L = &m->layers[l];
        char n[6][48];
        const char *const suffix[6] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"};
        for (int i = 0; i < 6; i++)
            snprintf(n[i], sizeof n[i], "blk.%u.%s.weight", l, suffix[i]);
        const char *qkv[3] = {n[1], n[2], n[3]};
        const char *norm1[1] = {n[0]}, *wo[1] = {n[4]}, *norm2[1] = {n[5]};
        const uint64_t one = 1, qkv_rows[3] = {d, kvd, kvd}, d_rows = d;
        st = load_rows(m, f, norm1, 1, &one, d, &L->attn_norm);
        if (st == SKV_OK)
            st = load_rows(m, f, qkv, 3, qkv_rows, d, &L->wqkv);
        if (st == SKV_OK)
            st = load_rows(m, f, wo, 1, &d_rows, d, &L->wo);
        if (st == SKV_OK)
            st = load_rows(m, f, norm2, 1, &one, d, &L->ffn_norm);
        char g[48], u[48], dn[48];
        snprintf(g, sizeof g, "blk.%u.ffn_gate.weight", l);
        snprintf(u, sizeof u, "blk.%u.ffn_up.weight", l);
        snprintf(dn, sizeof dn, "blk.%u.ffn_down.weight", l);
        const char *gu[2] = {g, u}, *down[1] = {dn};
        const uint64_t gu_rows[2] = {ff, ff};
        if (st == SKV_OK)
            st = load_rows(m, f, gu, 2, gu_rows, d, &L->wgu);
        if (st == SKV_OK)
            st = load_rows(m, f, down, 1, &d_rows, ff, &L->wdown);
    }
    if (st == SKV_OK) {
        const char *emb[1] = {"token_embd.weight"}, *norm[1] = {"output_norm.weight"};
        const uint64_t vocab = c->vocab, one = 1;
        st = load_rows(m, f, emb, 1, &vocab, d, &m->emb);
        if (st == SKV_OK)
            st = load_rows(m, f, norm, 1, &one, d, &m->out_norm);
        if (st == SKV_OK && gguf_find_tensor(f, "output.weight")) {
            const char *ow[1] = {"output.weight"};
            st = load_rows(m, f, ow, 1, &vocab, d, &m->out_w);
        } else if (st == SKV_OK) {
            clRetainMemObject(m->emb); /* tied embeddings */
            m->out_w = m->emb;
        }
    }
    if (st != SKV_OK) {
        llm_model_free(m);
        return st;
    }
    *out = m;
    return SKV_OK;
}

/* ---- sessions ------------------------------------------------------------------------ */

void llm_policy_init(llm_policy *p)
{
    memset(p, 0, sizeof *p);
    p->tier = SKV_TIER_F16;
    p->scorer = SKV_SCORER_KEYDIFF;
    p->recent_window = 128;
}

enum { A_X, A_XN, A_QKV, A_Q, A_K, A_V, A_ATT, A_GU, A_H, A_LOGITS, A_IDS, A_TARGET, A_LOSS, A_TOP, A_COUNT };

struct llm_session {
    llm_model *m;
    skv_cache *cache;
    skv_seq_id seq;
    llm_policy policy;
    uint32_t max_chunk;
    uint32_t page_tokens;
    uint64_t length;       /* positions run */
    uint64_t quantized;    /* uniform ADA: tokens quantised, from position page_tokens on */
    cl_mem a[A_COUNT];
    cl_event *events;      /* per layer: the q/k/v split's, the last attention's */
    double attention_s, forward_s;
    double kv_peak;        /* the most device KV bytes / F16 bytes after any append, */
    uint64_t peak_from;    /* from this length on (where an RDR budget can hold its floor) */
    llm_capture *cap;      /* llm_session_capture: what has been recorded */
    int capturing;
    float **q_stage;       /* per layer: a chunk's last window queries, until the chunk completes */
};

static void capture_stage_free(llm_session *s);

void llm_session_free(llm_session *s)
{
    if (!s)
        return;
    if (s->m)
        clFinish(s->m->queue);
    for (int i = 0; i < A_COUNT; i++)
        release_mem(&s->a[i]);
    free(s->events);
    llm_capture_free(s->cap);
    capture_stage_free(s);
    if (s->cache)
        skv_cache_destroy(s->cache);
    free(s);
}

/* The model's RoPE as skv describes it: every dim rotated, pairs (2i, 2i + 1) (the GGUF's
 * q/k rows are ordered for llama.cpp's interleaved RoPE, which llama.cl applies). */
static skv_rope_desc model_rope(const llm_config *c)
{
    return (skv_rope_desc){c->rope_theta, c->head_dim, 1, 1.0f};
}

skv_status llm_session_create(llm_model *m, skv_context *skv, const llm_policy *policy, uint32_t max_chunk,
                              llm_session **out)
{
    if (!m || !skv || !policy || !out || max_chunk == 0 || max_chunk > 4096)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_create: NULL argument or chunk outside 1..4096");
    *out = NULL;
    if (policy->tier >= SKV_TIER_COUNT || !(policy->budget >= 0.0f && policy->budget <= 1.0f))
        return fail(SKV_ERR_INVALID_ARG, "llm_session_create: tier %d or budget %g out of range", (int)policy->tier,
                    (double)policy->budget);
    if (policy->budget > 0 &&
        (policy->scorer == SKV_SCORER_NONE || (policy->scorer == SKV_SCORER_SNAPKV && !policy->prefix) ||
         (policy->scorer == SKV_SCORER_TRIATTENTION && (!policy->query_mean || !policy->query_abs))))
        return fail(SKV_ERR_UNSUPPORTED,
                    "llm_session_create: RDR here needs a scorer from the keys or from decode "
                    "(knorm, keydiff, manifold, manifold_windowed, streaming, observed), snapkv with a "
                    "prefix loaded from a capture, or triattention with its query statistics");
    if ((unsigned)policy->budget_rule > SKV_BUDGET_ADAKV)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_create: budget rule %d out of range", (int)policy->budget_rule);
    const llm_config *c = &m->cfg;
    llm_session *s = calloc(1, sizeof *s);
    if (!s)
        return fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_create: out of memory");
    s->m = m, s->policy = *policy, s->max_chunk = max_chunk;
    s->events = calloc(2 * (size_t)c->layers, sizeof *s->events);

    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = c->layers, d.q_heads = c->heads, d.kv_heads = c->kv_heads, d.head_dim = c->head_dim;
    s->page_tokens = d.page_tokens;
    /* F16 pages for the whole context, twice (compressed copies coexist with the F16
     * pages they replace while compressing), plus a page per list of slack */
    uint64_t f16_token = 2ull * c->head_dim * 2 + 4;
    uint64_t tokens = (uint64_t)c->context + 2ull * d.page_tokens + max_chunk;
    d.device_budget_bytes = 2 * tokens * f16_token * c->layers * c->kv_heads + (16u << 20);
    d.rope = model_rope(c);
    if (policy->budget > 0) {
        d.tiers = policy->drop_only ? 1u << SKV_TIER_F16 : (1u << SKV_TIER_COUNT) - 1;
        d.retention = SKV_RETENTION_RDR;
        d.scorer = policy->scorer;
        if (policy->scorer == SKV_SCORER_TRIATTENTION)
            d.query_mean = policy->query_mean, d.query_abs = policy->query_abs;
        d.budget_ratio = policy->budget;
        if (policy->budget_context) { /* a fixed cap: the F16 bytes of budget_context tokens */
            const uint64_t pages = (policy->budget_context + d.page_tokens - 1) / d.page_tokens;
            d.budget_ratio = 1.0f;
            d.budget_bytes = (uint64_t)((double)policy->budget * (double)(pages * d.page_tokens * f16_token) *
                                        c->layers * c->kv_heads);
        }
        d.budget_rule = policy->budget_rule;
        if (policy->recent_window)
            d.recent_window = policy->recent_window;
        if (policy->prefix)
            d.slack = 1u << 16; /* no compression on append: once, in llm_session_load_prefix */
    } else {
        d.tiers = (1u << SKV_TIER_F16) | (1u << policy->tier);
    }
    /* RDR's budget holds once it can hold the floor: the sinks' page, the recent window,
     * a partly filled page and the room for the slack tokens between compressions (skv.h);
     * under a fixed cap from the start; the uniform tiers are watched from 1024 tokens on */
    s->peak_from = policy->budget > 0 && policy->budget_context ? 0
                   : policy->budget > 0
                       ? (uint64_t)ceil((2.0 * d.page_tokens + d.recent_window + d.slack) / policy->budget)
                       : 1024;
    skv_status st = s->events ? skv_cache_create(skv, &d, &s->cache)
                              : fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_create: out of memory");
    if (st != SKV_OK && s->events)
        fail(st, "skv_cache_create: %s", skv_last_error());
    if (st == SKV_OK && (st = skv_seq_create(s->cache, &s->seq)) != SKV_OK)
        fail(st, "skv_seq_create: %s", skv_last_error());
    const size_t C = max_chunk, D = c->d_model, KV = (size_t)c->kv_heads * c->head_dim, FF = c->d_ff;
    const size_t floats[A_COUNT] = {C * D,  C * D,      C * (D + 2 * KV), C * D, C * KV, C * KV, C * D,
                                    C * 2 * FF, C * FF, C * c->vocab,     C,     C,      C,      C};
    for (int i = 0; st == SKV_OK && i < A_COUNT; i++) {
        cl_int e;
        s->a[i] = clCreateBuffer(m->ctx, CL_MEM_READ_WRITE, floats[i] * 4, NULL, &e);
        if (e != CL_SUCCESS)
            st = cl_fail(e, "clCreateBuffer (activations)");
    }
    if (st != SKV_OK) {
        llm_session_free(s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

/* ---- the forward pass ---------------------------------------------------------------- */

static cl_int set_args(cl_kernel k, int n, const size_t *sizes, const void *const *vals)
{
    cl_int e = CL_SUCCESS;
    for (int i = 0; i < n && e == CL_SUCCESS; i++)
        e = clSetKernelArg(k, (cl_uint)i, sizes[i], vals[i]);
    return e;
}
#define ARGS(k, ...)                                                                                              \
    set_args(k, (int)(sizeof((const void *[]){__VA_ARGS__}) / sizeof(void *)), arg_sizes,                         \
             (const void *const[]){__VA_ARGS__})

static skv_status launch(llm_session *s, cl_kernel k, cl_uint dims, const size_t *global, const size_t *local,
                         cl_event *ev, const char *what)
{
    cl_int e = clEnqueueNDRangeKernel(s->m->queue, k, dims, NULL, global, local, 0, NULL, ev);
    return e == CL_SUCCESS ? SKV_OK : cl_fail(e, what);
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* y[rows][n] = x[rows][k] W[n][k]^T + beta y (row-major; W a model weight). */
static skv_status gemm(llm_session *s, size_t rows, size_t n, size_t k, cl_mem x, size_t x_off, cl_mem w, float beta,
                       cl_mem y, size_t y_off)
{
    cl_command_queue q = s->m->queue;
    if (rows == 1 && s->m->cpu) {
        cl_kernel kg = s->m->k[K_GEMV_ROWS];
        cl_uint xo = (cl_uint)x_off, yo = (cl_uint)y_off, kk = (cl_uint)k, nn = (cl_uint)n;
        const size_t arg_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), 4, sizeof(cl_mem), 4, 4, 4, 4};
        cl_int e = ARGS(kg, &w, &x, &xo, &y, &yo, &kk, &beta, &nn);
        size_t global = round_up(n, 16), local = 16;
        return e == CL_SUCCESS ? launch(s, kg, 1, &global, &local, NULL, "gemv_rows") : cl_fail(e, "gemv args");
    }
    if (rows == 1) {
        cl_kernel kg = s->m->k[K_GEMV];
        cl_uint xo = (cl_uint)x_off, yo = (cl_uint)y_off, kk = (cl_uint)k;
        const size_t arg_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), 4, sizeof(cl_mem), 4, 4, 4};
        cl_int e = ARGS(kg, &w, &x, &xo, &y, &yo, &kk, &beta);
        size_t global = n * WG, local = WG;
        return e == CL_SUCCESS ? launch(s, kg, 1, &global, &local, NULL, "gemv") : cl_fail(e, "gemv args");
    }
    CLBlastStatusCode b = CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeYes, rows, n, k,
                                       1.0f, x, x_off, k, w, 0, k, beta, y, y_off, n, &q, NULL);
    if (b != CLBlastSuccess)
        return fail(SKV_ERR_OPENCL, "CLBlastSgemm (%zu x %zu x %zu) failed (%d)", rows, n, k, (int)b);
    return SKV_OK;
}

/* rows rows of x from row0 on, normalised into the same rows of y */
static skv_status rms_norm(llm_session *s, cl_mem x, cl_mem w, cl_mem y, size_t rows, size_t row0)
{
    const llm_config *c = &s->m->cfg;
    cl_uint d = c->d_model, r0 = (cl_uint)row0;
    cl_kernel k = s->m->k[K_RMS_NORM];
    const size_t arg_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof d, sizeof(float), sizeof r0};
    cl_int e = ARGS(k, &x, &w, &y, &d, &c->rms_eps, &r0);
    size_t global = rows * WG, local = WG;
    return e == CL_SUCCESS ? launch(s, k, 1, &global, &local, NULL, "rms_norm") : cl_fail(e, "rms_norm args");
}

static double event_end_s(cl_event ev)
{
    cl_ulong t = 0;
    if (clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof t, &t, NULL) != CL_SUCCESS)
        return 0;
    return 1e-9 * (double)t;
}

static skv_status capture_layer(llm_session *s, uint32_t l, uint32_t n, int32_t pos0);
static void capture_commit(llm_session *s, uint32_t n);
static skv_status capture_reserve(llm_session *s, uint64_t tokens);

/* The KV bytes after token t of a chunk of n was appended to layer l, against the F16
 * bytes of every token appended to every layer so far: the peak between compressions. */
static void track_peak(llm_session *s, uint32_t l, uint32_t n, uint32_t t)
{
    const llm_config *c = &s->m->cfg;
    const uint64_t appended = (uint64_t)c->layers * s->length + (uint64_t)l * n + t + 1;
    if (s->length + t + 1 < s->peak_from)
        return;
    skv_cache_stats cs;
    memset(&cs, 0, sizeof cs);
    cs.struct_size = sizeof cs;
    uint64_t f16_page = 0, used = 0;
    if (skv_cache_get_stats(s->cache, &cs) != SKV_OK ||
        skv_cache_page_bytes(s->cache, SKV_TIER_F16, &f16_page) != SKV_OK)
        return;
    for (int tier = 0; tier < SKV_TIER_COUNT; tier++)
        used += cs.pools[tier][SKV_MEM_DEVICE].bytes_used;
    /* against the tokens appended; under a fixed cap, against the context it is for */
    const double ref = s->policy.budget > 0 && s->policy.budget_context
                           ? (double)c->layers * ((s->policy.budget_context + s->page_tokens - 1) / s->page_tokens) *
                                 s->page_tokens
                           : (double)appended;
    const double ratio = (double)used / (ref * c->kv_heads * (double)f16_page / s->page_tokens);
    s->kv_peak = ratio > s->kv_peak ? ratio : s->kv_peak;
}

/* One layer of n tokens at positions pos0..: x += attention(x); x += mlp(x). */
static skv_status layer_forward(llm_session *s, uint32_t l, uint32_t n, int32_t pos0)
{
    llm_model *m = s->m;
    const llm_config *c = &m->cfg;
    const llm_layer *L = &m->layers[l];
    cl_mem *a = s->a;
    const size_t D = c->d_model, KV = (size_t)c->kv_heads * c->head_dim, FF = c->d_ff;
    skv_status st = rms_norm(s, a[A_X], L->attn_norm, a[A_XN], n, 0);
    if (st == SKV_OK)
        st = gemm(s, n, D + 2 * KV, D, a[A_XN], 0, L->wqkv, 0.0f, a[A_QKV], 0);
    if (st != SKV_OK)
        return st;
    cl_uint nq = (cl_uint)D, nkv = (cl_uint)KV, hd = c->head_dim;
    float log_theta = logf(c->rope_theta);
    const size_t arg_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4, 4, 4, 4, 4};
    cl_int e = ARGS(m->k[K_ROPE], &a[A_QKV], &a[A_Q], &a[A_K], &a[A_V], &nq, &nkv, &hd, &pos0, &log_theta);
    size_t g2[2] = {round_up((D + 2 * KV) / 2, 64), n};
    st = e == CL_SUCCESS ? launch(s, m->k[K_ROPE], 2, g2, NULL, &s->events[2 * l], "rope_split")
                         : cl_fail(e, "rope_split args");
    if (st == SKV_OK && s->capturing)
        st = capture_layer(s, l, n, pos0);
    /* attention: token by token, each appended, then attending over what the cache holds */
    const float scale = 1.0f / sqrtf((float)c->head_dim);
    for (uint32_t t = 0; st == SKV_OK && t < n; t++) {
        int32_t pos = pos0 + (int32_t)t;
        st = skv_append_cl(s->cache, s->seq, l, 1, SKV_F32, a[A_K], t * KV * 4, a[A_V], t * KV * 4, &pos, 0, NULL,
                           NULL);
        if (st != SKV_OK) {
            fail(st, "skv_append_cl (layer %u, position %d): %s", l, pos, skv_last_error());
            break;
        }
        track_peak(s, l, n, t);
        cl_event *ev = t + 1 == n ? &s->events[2 * l + 1] : NULL;
        st = skv_attention_decode_cl(s->cache, l, &s->seq, 1, SKV_F32, a[A_Q], t * D * 4, scale, SKV_F32, a[A_ATT],
                                     t * D * 4, 0, NULL, ev);
        if (st != SKV_OK)
            fail(st, "skv_attention_decode_cl (layer %u, position %d): %s", l, pos, skv_last_error());
    }
    if (st == SKV_OK)
        st = gemm(s, n, D, D, a[A_ATT], 0, L->wo, 1.0f, a[A_X], 0);
    if (st == SKV_OK)
        st = rms_norm(s, a[A_X], L->ffn_norm, a[A_XN], n, 0);
    if (st == SKV_OK)
        st = gemm(s, n, 2 * FF, D, a[A_XN], 0, L->wgu, 0.0f, a[A_GU], 0);
    if (st == SKV_OK) {
        cl_uint ff = (cl_uint)FF;
        const size_t silu_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), 4};
        e = set_args(m->k[K_SILU], 3, silu_sizes, (const void *const[]){&a[A_GU], &a[A_H], &ff});
        size_t gs[2] = {round_up(FF, 64), n};
        st = e == CL_SUCCESS ? launch(s, m->k[K_SILU], 2, gs, NULL, NULL, "silu_mul") : cl_fail(e, "silu_mul args");
    }
    if (st == SKV_OK)
        st = gemm(s, n, D, FF, a[A_H], 0, L->wdown, 1.0f, a[A_X], 0);
    return st;
}

/* Uniform ADA: quantise the full pages that have left the recent window (the first page,
 * the attention sinks', stays F16). skv_seq_quantize counts a range in the F16 list's own
 * order, where the tokens quantised before are no longer: the F16 list holds the first
 * page, then the tokens from `quantized + page` on. */
static skv_status quantize_behind(llm_session *s)
{
    const llm_policy *p = &s->policy;
    const uint64_t P = s->page_tokens, f16 = s->length - s->quantized;
    if (p->budget > 0 || p->tier == SKV_TIER_F16 || f16 < P + p->recent_window + P)
        return SKV_OK;
    const uint64_t pages = (f16 - P - p->recent_window) / P;
    skv_status st = skv_seq_quantize(s->cache, s->seq, P, P + pages * P, p->tier);
    if (st != SKV_OK)
        return fail(st, "skv_seq_quantize (%llu tokens after the first page): %s", (unsigned long long)(pages * P),
                    skv_last_error());
    s->quantized += pages * P;
    return SKV_OK;
}

static skv_status chunk_forward(llm_session *s, const int32_t *ids, uint32_t n, float *logits_last,
                                const int32_t *targets, float *loss, int32_t *top)
{
    llm_model *m = s->m;
    const llm_config *c = &m->cfg;
    cl_command_queue q = m->queue;
    cl_mem *a = s->a;
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint32_t)ids[i] >= c->vocab || (targets && targets[i] >= (int32_t)c->vocab))
            return fail(SKV_ERR_INVALID_ARG, "llm_forward: token %u: id %d or target outside the vocabulary (%u)", i,
                        ids[i], c->vocab);
    if (s->length + n > (uint64_t)INT32_MAX)
        return fail(SKV_ERR_INVALID_ARG, "llm_forward: positions past 2^31");
    cl_int e = clEnqueueWriteBuffer(q, a[A_IDS], CL_TRUE, 0, n * 4, ids, 0, NULL, NULL);
    if (e != CL_SUCCESS)
        return cl_fail(e, "clEnqueueWriteBuffer (ids)");
    cl_uint d = c->d_model;
    const size_t arg_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4};
    e = ARGS(m->k[K_EMBED], &a[A_IDS], &m->emb, &a[A_X], &d);
    size_t g[2] = {round_up(d, 64), n};
    skv_status st = e == CL_SUCCESS ? launch(s, m->k[K_EMBED], 2, g, NULL, NULL, "embed") : cl_fail(e, "embed args");
    for (uint32_t l = 0; st == SKV_OK && l < c->layers; l++)
        st = layer_forward(s, l, n, (int32_t)s->length);
    /* logits: every row for a loss, else the last row only */
    size_t row0 = targets ? 0 : n - 1, rows = n - row0;
    if (st == SKV_OK && (targets || logits_last)) {
        st = rms_norm(s, a[A_X], m->out_norm, a[A_XN], rows, row0);
        if (st == SKV_OK)
            st = gemm(s, rows, c->vocab, d, a[A_XN], row0 * d, m->out_w, 0.0f, a[A_LOGITS], 0);
    }
    if (st == SKV_OK && targets) {
        e = clEnqueueWriteBuffer(q, a[A_TARGET], CL_TRUE, 0, n * 4, targets, 0, NULL, NULL);
        cl_uint v = c->vocab;
        const size_t loss_sizes[] = {sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), sizeof(cl_mem), 4};
        if (e == CL_SUCCESS)
            e = set_args(m->k[K_LOSS], 5, loss_sizes,
                         (const void *const[]){&a[A_LOGITS], &a[A_TARGET], &a[A_LOSS], &a[A_TOP], &v});
        size_t global = (size_t)n * WG, local = WG;
        st = e == CL_SUCCESS ? launch(s, m->k[K_LOSS], 1, &global, &local, NULL, "next_token_loss")
                             : cl_fail(e, "next_token_loss args");
        if (st == SKV_OK && loss && (e = clEnqueueReadBuffer(q, a[A_LOSS], CL_TRUE, 0, n * 4, loss, 0, NULL, NULL)))
            st = cl_fail(e, "clEnqueueReadBuffer (loss)");
        if (st == SKV_OK && top && (e = clEnqueueReadBuffer(q, a[A_TOP], CL_TRUE, 0, n * 4, top, 0, NULL, NULL)))
            st = cl_fail(e, "clEnqueueReadBuffer (top)");
    }
    if (st == SKV_OK && logits_last &&
        (e = clEnqueueReadBuffer(q, a[A_LOGITS], CL_TRUE, (rows - 1) * c->vocab * 4, (size_t)c->vocab * 4,
                                 logits_last, 0, NULL, NULL)))
        st = cl_fail(e, "clEnqueueReadBuffer (logits)");
    if (st == SKV_OK && (e = clFinish(q)) != CL_SUCCESS)
        st = cl_fail(e, "clFinish");
    /* device time in attention: from the q/k/v split's end to the last attention's end */
    for (uint32_t l = 0; l < c->layers; l++) {
        cl_event *ev = &s->events[2 * l];
        if (st == SKV_OK && ev[0] && ev[1])
            s->attention_s += event_end_s(ev[1]) - event_end_s(ev[0]);
        for (int i = 0; i < 2; i++)
            if (ev[i])
                clReleaseEvent(ev[i]), ev[i] = NULL;
    }
    if (st == SKV_OK) {
        if (s->capturing)
            capture_commit(s, n);
        s->length += n;
        st = quantize_behind(s);
    }
    return st;
}

skv_status llm_forward(llm_session *s, const int32_t *ids, uint32_t n, float *logits_last, const int32_t *targets,
                       float *loss, int32_t *top)
{
    if (!s || !ids || n == 0)
        return fail(SKV_ERR_INVALID_ARG, "llm_forward: NULL session or ids, or no tokens");
    double t0 = now_s();
    skv_status st = s->capturing ? capture_reserve(s, s->length + n) : SKV_OK;
    for (uint32_t i = 0; st == SKV_OK && i < n; i += s->max_chunk) {
        uint32_t k = n - i < s->max_chunk ? n - i : s->max_chunk;
        st = chunk_forward(s, ids + i, k, i + k == n ? logits_last : NULL, targets ? targets + i : NULL,
                           loss ? loss + i : NULL, top ? top + i : NULL);
    }
    s->forward_s += now_s() - t0;
    return st;
}

skv_status llm_session_stats_get(llm_session *s, llm_session_stats *out)
{
    if (!s || !out)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_stats_get: NULL argument");
    memset(out, 0, sizeof *out);
    skv_cache_stats cs;
    memset(&cs, 0, sizeof cs);
    cs.struct_size = sizeof cs;
    skv_status st = skv_cache_get_stats(s->cache, &cs);
    if (st != SKV_OK)
        return fail(st, "skv_cache_get_stats: %s", skv_last_error());
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        out->kv_bytes += cs.pools[t][SKV_MEM_DEVICE].bytes_used;
        out->held[t] = cs.tokens[t];
    }
    uint64_t f16_page = 0;
    if ((st = skv_cache_page_bytes(s->cache, SKV_TIER_F16, &f16_page)) != SKV_OK)
        return fail(st, "skv_cache_page_bytes: %s", skv_last_error());
    const llm_config *c = &s->m->cfg;
    out->kv_bytes_dense = (s->length + s->page_tokens - 1) / s->page_tokens * f16_page * c->layers * c->kv_heads;
    out->tokens = s->length;
    out->kv_peak_ratio = s->kv_peak;
    out->kv_peak_from = s->peak_from;
    out->attention_s = s->attention_s;
    out->forward_s = s->forward_s;
    return SKV_OK;
}

void llm_session_reset_timing(llm_session *s)
{
    if (s)
        s->attention_s = s->forward_s = 0;
}

/* ---- captured prefixes ---------------------------------------------------------------- */

skv_status llm_capture_query_stats(const llm_model *m, const llm_capture *cap, float **mean, float **abs_pair)
{
    if (!m || !cap || !mean || !abs_pair)
        return fail(SKV_ERR_INVALID_ARG, "llm_capture_query_stats: NULL argument");
    *mean = *abs_pair = NULL;
    const llm_config *c = &m->cfg;
    if (cap->layers != c->layers || cap->q_heads != c->heads || cap->head_dim != c->head_dim || !cap->n_window)
        return fail(SKV_ERR_INVALID_ARG, "llm_capture_query_stats: a capture of %u window queries, %u layers of %u "
                    "heads of %u; the model has %u, %u, %u", cap->n_window, cap->layers, cap->q_heads,
                    cap->head_dim, c->layers, c->heads, c->head_dim);
    const size_t per = (size_t)c->heads * c->head_dim;
    const skv_rope_desc rope = model_rope(c);
    float *mu = malloc(c->layers * per * sizeof *mu), *ab = malloc(c->layers * per / 2 * sizeof *ab);
    skv_status st = mu && ab ? SKV_OK : fail(SKV_ERR_OUT_OF_MEMORY, "llm_capture_query_stats: out of memory");
    for (uint32_t l = 0; st == SKV_OK && l < c->layers; l++)
        if ((st = skv_query_stats(&rope, c->heads, c->head_dim, cap->n_window, cap->q[l], cap->q_pos, mu + l * per,
                                  ab + l * per / 2)))
            fail(st, "skv_query_stats (layer %u): %s", l, skv_last_error());
    if (st != SKV_OK) {
        free(mu), free(ab);
        return st;
    }
    *mean = mu, *abs_pair = ab;
    return SKV_OK;
}

void llm_capture_free(llm_capture *c)
{
    if (!c)
        return;
    for (uint32_t l = 0; l < c->layers; l++) {
        if (c->k)
            free(c->k[l]);
        if (c->v)
            free(c->v[l]);
        if (c->q)
            free(c->q[l]);
    }
    free(c->k), free(c->v), free(c->q), free(c->q_pos);
    free(c);
}

static void capture_stage_free(llm_session *s)
{
    for (uint32_t l = 0; s->q_stage && l < s->m->cfg.layers; l++)
        free(s->q_stage[l]);
    free(s->q_stage);
    s->q_stage = NULL;
}

skv_status llm_session_capture(llm_session *s, int on, uint32_t q_window)
{
    if (!s)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_capture: NULL session");
    if (!on) {
        s->capturing = 0;
        return SKV_OK;
    }
    if (s->length)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_capture: the session holds %llu tokens (a capture starts at 0)",
                    (unsigned long long)s->length);
    if (q_window > 4096)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_capture: q_window %u (0..4096)", q_window);
    const llm_config *c = &s->m->cfg;
    clFinish(s->m->queue); /* no read may still target the old capture */
    llm_capture_free(s->cap);
    capture_stage_free(s);
    s->capturing = 0;
    llm_capture *cp = s->cap = calloc(1, sizeof *cp);
    if (!cp)
        return fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_capture: out of memory");
    cp->layers = c->layers, cp->kv_heads = c->kv_heads, cp->q_heads = c->heads, cp->head_dim = c->head_dim;
    cp->window = q_window;
    const size_t D = (size_t)c->heads * c->head_dim, stage = q_window < s->max_chunk ? q_window : s->max_chunk;
    int ok = (cp->k = calloc(c->layers, sizeof *cp->k)) && (cp->v = calloc(c->layers, sizeof *cp->v)) &&
             (cp->q = calloc(c->layers, sizeof *cp->q)) && (s->q_stage = calloc(c->layers, sizeof *s->q_stage));
    if (ok && q_window)
        ok = (cp->q_pos = malloc(q_window * sizeof *cp->q_pos)) != NULL;
    for (uint32_t l = 0; ok && q_window && l < c->layers; l++)
        ok = (cp->q[l] = malloc(q_window * D * sizeof(float))) && (s->q_stage[l] = malloc(stage * D * sizeof(float)));
    if (!ok) {
        llm_capture_free(s->cap);
        s->cap = NULL;
        capture_stage_free(s);
        return fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_capture: out of memory");
    }
    s->capturing = 1;
    return SKV_OK;
}

const llm_capture *llm_session_captured(const llm_session *s) { return s ? s->cap : NULL; }

llm_capture *llm_session_capture_take(llm_session *s)
{
    if (!s || !s->cap)
        return NULL;
    clFinish(s->m->queue); /* reads of a failed chunk may still be queued */
    llm_capture *cp = s->cap;
    s->cap = NULL;
    s->capturing = 0;
    capture_stage_free(s);
    return cp;
}

/* Room for `tokens` positions of keys and values in every layer (before any read of
 * the coming chunks is queued: the previous chunk's reads have completed). */
static skv_status capture_reserve(llm_session *s, uint64_t tokens)
{
    llm_capture *cp = s->cap;
    if (tokens <= cp->capacity)
        return SKV_OK;
    if (tokens > (1u << 24))
        return fail(SKV_ERR_INVALID_ARG, "llm_forward: a capture holds at most 2^24 tokens");
    uint64_t cap = cp->capacity ? 2ull * cp->capacity : 256;
    while (cap < tokens)
        cap *= 2;
    const size_t row = (size_t)cp->kv_heads * cp->head_dim * sizeof(float);
    for (uint32_t l = 0; l < cp->layers; l++) {
        float *k = realloc(cp->k[l], cap * row);
        if (k)
            cp->k[l] = k;
        float *v = k ? realloc(cp->v[l], cap * row) : NULL;
        if (v)
            cp->v[l] = v;
        if (!k || !v) /* the arrays grown so far keep their contents; capacity is the least */
            return fail(SKV_ERR_OUT_OF_MEMORY, "llm_forward: out of memory for the capture (%llu tokens)",
                        (unsigned long long)tokens);
    }
    cp->capacity = (uint32_t)cap;
    return SKV_OK;
}

/* Queues the reads of layer l's keys and values of the chunk (after rope_split, in queue
 * order; the chunk's clFinish completes them) and of its last window queries. */
static skv_status capture_layer(llm_session *s, uint32_t l, uint32_t n, int32_t pos0)
{
    llm_capture *cp = s->cap;
    cl_command_queue q = s->m->queue;
    const size_t KV = (size_t)cp->kv_heads * cp->head_dim, D = (size_t)cp->q_heads * cp->head_dim;
    if ((uint64_t)pos0 != cp->tokens || (uint64_t)pos0 + n > cp->capacity)
        return fail(SKV_ERR_INTERNAL, "capture: chunk at %d, %u tokens recorded", pos0, cp->tokens);
    cl_int e = clEnqueueReadBuffer(q, s->a[A_K], CL_FALSE, 0, n * KV * 4, cp->k[l] + (size_t)pos0 * KV, 0, NULL, NULL);
    if (e == CL_SUCCESS)
        e = clEnqueueReadBuffer(q, s->a[A_V], CL_FALSE, 0, n * KV * 4, cp->v[l] + (size_t)pos0 * KV, 0, NULL, NULL);
    const uint32_t m = n < cp->window ? n : cp->window;
    if (e == CL_SUCCESS && m)
        e = clEnqueueReadBuffer(q, s->a[A_Q], CL_FALSE, (n - m) * D * 4, m * D * 4, s->q_stage[l], 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : cl_fail(e, "clEnqueueReadBuffer (capture)");
}

/* After the chunk completed: its tokens are recorded; the window keeps the last ones. */
static void capture_commit(llm_session *s, uint32_t n)
{
    llm_capture *cp = s->cap;
    const size_t D = (size_t)cp->q_heads * cp->head_dim;
    const uint32_t m = n < cp->window ? n : cp->window;
    const uint32_t keep = cp->n_window < cp->window - m ? cp->n_window : cp->window - m;
    for (uint32_t l = 0; m && l < cp->layers; l++) {
        memmove(cp->q[l], cp->q[l] + (size_t)(cp->n_window - keep) * D, keep * D * sizeof(float));
        memcpy(cp->q[l] + (size_t)keep * D, s->q_stage[l], m * D * sizeof(float));
    }
    if (m) {
        memmove(cp->q_pos, cp->q_pos + (cp->n_window - keep), keep * sizeof *cp->q_pos);
        for (uint32_t i = 0; i < m; i++)
            cp->q_pos[keep + i] = (int32_t)(cp->tokens + n - m + i);
        cp->n_window = keep + m;
    }
    cp->tokens += n;
}

/* The observed scorer: the window's queries as decode steps, the whole window of a
 * layer in one batch (the sequence repeated: each entry is a step). */
static skv_status observe_window_steps(llm_session *s, const llm_capture *cap)
{
    const size_t D = (size_t)cap->q_heads * cap->head_dim;
    skv_seq_id *seqs = malloc(cap->n_window * sizeof *seqs);
    float *out = malloc(cap->n_window * D * sizeof *out);
    skv_status st = seqs && out ? SKV_OK : fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_load_prefix: out of memory");
    for (uint32_t i = 0; st == SKV_OK && i < cap->n_window; i++)
        seqs[i] = s->seq;
    const float scale = 1.0f / sqrtf((float)cap->head_dim);
    for (uint32_t l = 0; st == SKV_OK && l < cap->layers; l++)
        if ((st = skv_attention_decode(s->cache, l, seqs, cap->n_window, SKV_F32, cap->q[l], scale, SKV_F32, out)))
            fail(st, "skv_attention_decode (layer %u, the window's %u queries): %s", l, cap->n_window,
                 skv_last_error());
    free(seqs), free(out);
    return st;
}

#define LOAD_PIECE 1024u /* tokens per skv_append */

skv_status llm_session_load_prefix(llm_session *s, const llm_capture *cap)
{
    if (!s || !cap)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_load_prefix: NULL argument");
    const llm_config *c = &s->m->cfg;
    const llm_policy *p = &s->policy;
    if (s->length)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_load_prefix: the session already holds %llu tokens",
                    (unsigned long long)s->length);
    if (cap->layers != c->layers || cap->kv_heads != c->kv_heads || cap->q_heads != c->heads ||
        cap->head_dim != c->head_dim)
        return fail(SKV_ERR_INVALID_ARG,
                    "llm_session_load_prefix: a capture of %u layers, %u/%u heads of %u, the model has %u, %u/%u of %u",
                    cap->layers, cap->q_heads, cap->kv_heads, cap->head_dim, c->layers, c->heads, c->kv_heads,
                    c->head_dim);
    if (cap->tokens == 0 || cap->tokens > c->context)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_load_prefix: a capture of %u tokens (1..the context, %u)",
                    cap->tokens, c->context);
    if (cap->n_window > cap->window || cap->n_window > cap->tokens)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_load_prefix: %u window queries of %u", cap->n_window,
                    cap->window);
    const int rdr = p->budget > 0;
    if (rdr && !p->prefix)
        return fail(SKV_ERR_INVALID_ARG,
                    "llm_session_load_prefix: an RDR session needs llm_policy.prefix (it would compress while loading)");
    if (rdr && (p->scorer == SKV_SCORER_SNAPKV || p->scorer == SKV_SCORER_OBSERVED) && !cap->n_window)
        return fail(SKV_ERR_INVALID_ARG, "llm_session_load_prefix: the %s scorer needs the capture's window queries",
                    p->scorer == SKV_SCORER_SNAPKV ? "snapkv" : "observed");
    skv_status st = SKV_OK;
    /* RDR: the window first (SnapKV's observation window; RDR's query energy) */
    for (uint32_t l = 0; rdr && cap->n_window && st == SKV_OK && l < c->layers; l++)
        if ((st = skv_seq_observe_window(s->cache, s->seq, l, cap->n_window, SKV_F32, cap->q[l], cap->q_pos)))
            fail(st, "skv_seq_observe_window (layer %u): %s", l, skv_last_error());
    const uint32_t piece = cap->tokens < LOAD_PIECE ? cap->tokens : LOAD_PIECE;
    int32_t *pos = st == SKV_OK ? malloc(piece * sizeof *pos) : NULL;
    if (st == SKV_OK && !pos)
        st = fail(SKV_ERR_OUT_OF_MEMORY, "llm_session_load_prefix: out of memory");
    const size_t KV = (size_t)c->kv_heads * c->head_dim;
    for (uint32_t t0 = 0; st == SKV_OK && t0 < cap->tokens; t0 += piece) {
        const uint32_t n = cap->tokens - t0 < piece ? cap->tokens - t0 : piece;
        for (uint32_t i = 0; i < n; i++)
            pos[i] = (int32_t)(t0 + i);
        for (uint32_t l = 0; st == SKV_OK && l < c->layers; l++)
            if ((st = skv_append(s->cache, s->seq, l, n, SKV_F32, cap->k[l] + t0 * KV, cap->v[l] + t0 * KV, pos)))
                fail(st, "skv_append (layer %u, positions %u..%u): %s", l, t0, t0 + n - 1, skv_last_error());
    }
    free(pos);
    if (st != SKV_OK)
        return st;
    s->length = cap->tokens;
    s->quantized = 0;
    if (rdr && p->scorer == SKV_SCORER_OBSERVED)
        st = observe_window_steps(s, cap);
    if (st == SKV_OK && rdr && (st = skv_compress(s->cache, s->seq)) != SKV_OK)
        fail(st, "skv_compress: %s", skv_last_error());
    if (st == SKV_OK)
        st = quantize_behind(s);
    return st;
}
