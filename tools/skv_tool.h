/* Shared pieces of the `skv` command's subcommands. */
#ifndef SKV_TOOL_H
#define SKV_TOOL_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "skv/skv.h"

#define SKV_EXIT_USAGE 2

typedef struct skv_command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    void (*usage)(FILE *out);
} skv_command;

int cmd_info(int argc, char **argv);
void usage_info(FILE *out);
int cmd_bench(int argc, char **argv);
void usage_demo(FILE *out);
void usage_eval(FILE *out);
int cmd_eval(int argc, char **argv);
/* skv eval --late-shift (tools/eval_hetero.c) */
int eval_late_shift(int argc, char **argv);
int cmd_demo(int argc, char **argv);
void usage_bench(FILE *out);
int cmd_tune(int argc, char **argv);
void usage_tune(FILE *out);
int cmd_kernels(int argc, char **argv);
/* skv generate / skv perplexity: the Llama example (tools/cmd_llama.c, examples/llama) */
int cmd_generate(int argc, char **argv);
void usage_generate(FILE *out);
int cmd_perplexity(int argc, char **argv);
void usage_perplexity(FILE *out);
/* skv longeval: RULER-style retrieval on the Llama example (tools/cmd_longeval.c) */
int cmd_longeval(int argc, char **argv);
void usage_longeval(FILE *out);
void usage_kernels(FILE *out);

/* A one-line error, then the subcommand's usage on stderr; returns SKV_EXIT_USAGE. */
int tool_usage_error(void (*usage)(FILE *), const char *fmt, ...);
/* A progress line on stderr when it is a terminal (rewritten in place; "" clears it);
 * nothing in logs. */
void tool_progress(const char *fmt, ...);
/* Tier names as the options and outputs spell them ("f16", "a4v8", "a3v4", "a2v2"). */
extern const char *const tool_tier_names[SKV_TIER_COUNT];
/* Scorer names, indexed by skv_scorer ("none", "knorm", "keydiff", ...), and the index of
 * one, or -1. */
#define TOOL_N_SCORERS 9
extern const char *const tool_scorer_names[TOOL_N_SCORERS];
int tool_scorer_index(const char *s);
/* The tier named by the first `len` characters of s, or -1. */
int tool_tier_index(const char *s, size_t len);
/* A decimal integer in lo..hi, the whole string; 0 on success, -1 otherwise. */
int tool_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out);
/* A comma-separated list of 1..max values in [lo, hi] into out[0..*n): 0, or -1. */
int tool_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, int max, int *n);
/* Monotonic wall-clock seconds. */
double tool_now_s(void);
/* qsort comparator of doubles, ascending. */
int tool_cmp_double(const void *a, const void *b);
/* Writes text to `path` through a temporary file and a rename (nothing half-written);
 * "-" means stdout. 0 on success. */
int tool_write_file(const char *path, const char *text);
int tool_write_bytes(const char *path, const void *data, size_t n);
/* A context on `device` (NULL: skv's choice), with profiling if asked, and its profile.
 * On failure prints "skv <cmd>: <status>: <message>" and returns the status. */
skv_status tool_open_context(const char *cmd, const char *device, int profiling, skv_context **ctx,
                             skv_device_profile *prof);

/* Decode variants by name (tools/variant.c): the first `len` characters of s, e.g.
 * "lanes8/chunks=8"; 0 on success, *is_default 1 for "default" (no override), 2 for
 * "builtin" (the built-in entry's parameters, skv_tuning_info.builtin). */
int tool_variant_parse(const char *s, size_t len, skv_decode_params *p, int *is_default);
/* The full name of parameters in use, e.g. "lanes8/tile=256/chunks=4" (F16 slots per key
 * pass only for the F16 tier, or tier -1: any). */
void tool_variant_name(const skv_decode_params *p, int tier, char *out, size_t n);
/* The parameters as a JSON object (the tuning database's "params"). */
cJSON *tool_variant_json(const skv_decode_params *p);

/* In a subcommand: on a failed skv call, print "skv <cmd>: <status>: <message>" (after the
 * progress line) and jump to `label`. */
#define TOOL_CHECK(cmd, label, call)                                                              \
    do {                                                                                           \
        skv_status st_ = (call);                                                                   \
        if (st_ != SKV_OK) {                                                                       \
            fprintf(stderr, "\nskv %s: %s: %s\n", cmd, skv_status_str(st_), skv_last_error());     \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#endif
