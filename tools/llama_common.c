/* What the real-model subcommands share (llama_common.h). */
#define _POSIX_C_SOURCE 200809L
#include "llama_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skv_tool.h"

void llama_env_close(llama_env *e)
{
    llm_model_free(e->model);
    skv_context_destroy(e->skv);
    if (e->queue)
        clReleaseCommandQueue(e->queue);
    if (e->cl_ctx)
        clReleaseContext(e->cl_ctx);
    if (e->device)
        clReleaseDevice(e->device);
    bpe_destroy(e->bpe);
    gguf_close(e->gguf);
    memset(e, 0, sizeof *e);
}

int llama_env_open(const char *cmd, const char *path, const char *device, llama_env *e)
{
    memset(e, 0, sizeof *e);
    gguf_status gs = gguf_open_file(path, &e->gguf);
    if (gs != GGUF_OK) {
        fprintf(stderr, "skv %s: %s\n", cmd, gguf_last_error()); /* the message names the file */
        return -1;
    }
    skv_status st = llm_tokenizer_load(e->gguf, &e->bpe, &e->eos);
    if (st != SKV_OK) {
        fprintf(stderr, "skv %s: %s: %s\n", cmd, path, llm_last_error());
        goto fail;
    }

    /* the device skv would choose for `device`, then the runtime's own objects on it */
    skv_context *probe = NULL;
    if (tool_open_context(cmd, device, 0, &probe, &e->prof) != SKV_OK)
        goto fail;
    st = skv_context_cl_objects(probe, NULL, &e->device, NULL, NULL);
    if (st == SKV_OK)
        clRetainDevice(e->device);
    skv_context_destroy(probe);
    if (st != SKV_OK) {
        fprintf(stderr, "skv %s: %s: %s\n", cmd, skv_status_str(st), skv_last_error());
        e->device = NULL;
        goto fail;
    }
    cl_int err;
    e->cl_ctx = clCreateContext(NULL, 1, &e->device, NULL, NULL, &err);
    if (err == CL_SUCCESS)
        e->queue = clCreateCommandQueue(e->cl_ctx, e->device, CL_QUEUE_PROFILING_ENABLE, &err);
    if (err != CL_SUCCESS) {
        fprintf(stderr, "skv %s: creating the OpenCL context and queue failed (%d)\n", cmd, (int)err);
        goto fail;
    }
    tool_progress("loading %s", path);
    st = llm_model_load(e->gguf, e->cl_ctx, e->device, e->queue, &e->model);
    tool_progress("");
    if (st != SKV_OK) {
        fprintf(stderr, "skv %s: %s: %s: %s\n", cmd, path, skv_status_str(st), llm_last_error());
        goto fail;
    }
    st = skv_context_create_cl(NULL, e->cl_ctx, e->device, e->queue, &e->skv);
    if (st != SKV_OK) {
        fprintf(stderr, "skv %s: %s: %s\n", cmd, skv_status_str(st), skv_last_error());
        goto fail;
    }
    return 0;
fail:
    llama_env_close(e);
    return -1;
}

char *llama_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t r; buf && (r = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += r;
        if (n == cap) {
            char *b = cap < (256u << 20) ? realloc(buf, cap * 2) : NULL;
            if (!b)
                free(buf);
            buf = b, cap *= 2;
        }
    }
    if (buf && ferror(f))
        free(buf), buf = NULL;
    fclose(f);
    *len = n;
    return buf;
}

int32_t *llama_tokenize(const char *cmd, const bpe_vocab *v, const char *text, size_t len, size_t *n)
{
    size_t cap = len + 16; /* a byte-level BPE gives at most one id per byte */
    int32_t *ids = malloc(cap * sizeof *ids);
    bpe_status bs = ids ? bpe_encode(v, text, len, true, ids, cap, n) : BPE_ERR_NOMEM;
    if (bs != BPE_OK) {
        fprintf(stderr, "skv %s: tokenizing: %s\n", cmd, bpe_status_str(bs));
        free(ids);
        return NULL;
    }
    return ids;
}

void llama_format_duration(double s, char *out, size_t n)
{
    if (!(s >= 0) || s > 1e6)
        snprintf(out, n, "?");
    else if (s >= 60)
        snprintf(out, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else
        snprintf(out, n, "%.0fs", s);
}

llm_capture *llama_capture_prefill(const char *cmd, llama_env *e, const int32_t *ids, size_t n, uint32_t chunk,
                                   uint32_t window, const char *label)
{
    llm_policy dense;
    llm_policy_init(&dense);
    llm_session *s = NULL;
    skv_status st = llm_session_create(e->model, e->skv, &dense, chunk, &s);
    if (st == SKV_OK)
        st = llm_session_capture(s, 1, window);
    for (size_t i = 0; st == SKV_OK && i < n; i += chunk) {
        uint32_t k = n - i < chunk ? (uint32_t)(n - i) : chunk;
        st = llm_forward(s, ids + i, k, NULL, NULL, NULL, NULL);
        tool_progress("%s: prefill %zu/%zu", label, i + k, n);
    }
    tool_progress("");
    llm_capture *cap = st == SKV_OK ? llm_session_capture_take(s) : NULL;
    if (st != SKV_OK)
        fprintf(stderr, "skv %s: the captured prefill: %s: %s\n", cmd, skv_status_str(st), llm_last_error());
    llm_session_free(s);
    return cap;
}

int llama_calibrate(const char *cmd, llama_env *e, const char *path, uint32_t chunk, float **mean, float **abs_pair)
{
    size_t len = 0, n = 0;
    char *text = llama_read_file(path, &len);
    int32_t *ids = text ? llama_tokenize(cmd, e->bpe, text, len, &n) : NULL;
    free(text);
    if (!ids) {
        fprintf(stderr, "skv %s: cannot read the calibration text %s\n", cmd, path);
        return -1;
    }
    const uint32_t ctx = llm_model_config(e->model)->context;
    size_t use = n < LLAMA_CALIB_TOKENS ? n : LLAMA_CALIB_TOKENS;
    use = use < ctx ? use : ctx;
    if (use < LLAMA_CALIB_WINDOW) {
        fprintf(stderr, "skv %s: the calibration text %s has %zu tokens; it needs %u\n", cmd, path, n,
                LLAMA_CALIB_WINDOW);
        free(ids);
        return -1;
    }
    llm_capture *cap = llama_capture_prefill(cmd, e, ids, use, chunk, LLAMA_CALIB_WINDOW, "calibration");
    free(ids);
    if (!cap)
        return -1;
    skv_status st = llm_capture_query_stats(e->model, cap, mean, abs_pair);
    if (st != SKV_OK)
        fprintf(stderr, "skv %s: calibrating on %s: %s\n", cmd, path, llm_last_error());
    llm_capture_free(cap);
    return st == SKV_OK ? 0 : -1;
}
