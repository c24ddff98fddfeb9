/* What the real-model subcommands share (tools/cmd_llama.c: generate, perplexity;
 * tools/cmd_longeval.c: longeval): the model file, its tokenizer, the runtime's own
 * OpenCL context and queue with the weights on it and an skv context on them; file and
 * tokenizer helpers; a duration for progress lines. */
#ifndef SKV_LLAMA_COMMON_H
#define SKV_LLAMA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "bpe.h"
#include "gguf.h"
#include "llama.h"

typedef struct llama_env {
    gguf_file *gguf;
    bpe_vocab *bpe;
    cl_context cl_ctx;
    cl_device_id device;
    cl_command_queue queue;
    skv_context *skv;
    llm_model *model;
    skv_device_profile prof;
    int32_t eos;
} llama_env;

/* The model file, its tokenizer, the runtime's own OpenCL context and profiling queue on
 * the device skv's selector picks (`device`, NULL for skv's choice), the weights on it,
 * and an skv context on them. 0, or -1 with "skv <cmd>: ..." printed and nothing held. */
int llama_env_open(const char *cmd, const char *path, const char *device, llama_env *e);
void llama_env_close(llama_env *e); /* a closed or zeroed env is fine */

/* A whole file (at most 256 MiB), malloc'ed; NULL when it cannot be read. */
char *llama_read_file(const char *path, size_t *len);
/* The ids of text (control tokens matched), malloc'ed; NULL on failure (printed as
 * "skv <cmd>: tokenizing: ..."). */
int32_t *llama_tokenize(const char *cmd, const bpe_vocab *v, const char *text, size_t len, size_t *n);
/* "42s", "3m07s", or "?" for a negative, NaN or absurd value. */
void llama_format_duration(double s, char *out, size_t n);

/* A dense session runs ids[0..n) in chunks with llm_session_capture(window) on, a
 * progress line "<label>: prefill i/n" per chunk: its capture (the caller frees it), or
 * NULL with "skv <cmd>: ..." printed. */
llm_capture *llama_capture_prefill(const char *cmd, llama_env *e, const int32_t *ids, size_t n, uint32_t chunk,
                                   uint32_t window, const char *label);

/* TriAttention's calibration on a text other than the one evaluated: a dense prefill of
 * its first LLAMA_CALIB_TOKENS tokens (fewer when the text or the model's context is
 * shorter, at least LLAMA_CALIB_WINDOW), the queries of its last LLAMA_CALIB_WINDOW
 * positions through llm_capture_query_stats into *mean and *abs_pair (malloc'ed, every
 * layer). 0, or -1 with "skv <cmd>: ..." printed. */
#define LLAMA_CALIB_TOKENS 1024u
#define LLAMA_CALIB_WINDOW 256u
int llama_calibrate(const char *cmd, llama_env *e, const char *path, uint32_t chunk, float **mean, float **abs_pair);

#endif
