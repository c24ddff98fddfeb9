/* The `skv` command: one entry point, a subcommand per job. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "skv_tool.h"

static const skv_command commands[] = {
    {"demo", "stream a long synthetic context, decode dense vs compressed side by side", cmd_demo, usage_demo},
    {"eval", "the quality matrix: scorer x budget x tier set on the synthetic model", cmd_eval, usage_eval},
    {"info", "list OpenCL devices, their profiles, and which one skv selects", cmd_info, usage_info},
    {"bench", "measure decode attention against the device's read bandwidth", cmd_bench, usage_bench},
    {"tune", "measure decode variants on this device and write the fastest to the tuning database", cmd_tune,
     usage_tune},
    {"generate", "run a Llama-architecture GGUF model with skv as its KV cache: greedy text", cmd_generate,
     usage_generate},
    {"perplexity", "next-token loss of a real model over a text, dense vs compressed caches", cmd_perplexity,
     usage_perplexity},
    {"longeval", "long-context retrieval (RULER needles) on a real model: one dense prefill, every policy on it",
     cmd_longeval, usage_longeval},
    {"kernels", "list every OpenCL program skv builds for a device profile, with its exact options", cmd_kernels,
     usage_kernels},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out)
{
    fprintf(out, "usage: skv <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n`skv <command> --help` describes a command. skv %s\n", skv_version_string());
}

int tool_usage_error(void (*usage_fn)(FILE *), const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "skv: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    usage_fn(stderr);
    return SKV_EXIT_USAGE;
}

void tool_progress(const char *fmt, ...)
{
    if (!isatty(2))
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\r\033[K");
    vfprintf(stderr, fmt, ap);
    fflush(stderr);
    va_end(ap);
}

int tool_write_bytes(const char *path, const void *data, size_t n)
{
    if (strcmp(path, "-") == 0)
        return fwrite(data, 1, n, stdout) == n ? 0 : -1;
    size_t len = strlen(path) + 32;
    char *tmp = malloc(len);
    if (!tmp)
        return -1;
    snprintf(tmp, len, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(data, 1, n, f) == n;
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok)
        remove(tmp);
    free(tmp);
    return ok ? 0 : -1;
}

const char *const tool_tier_names[SKV_TIER_COUNT] = {"f16", "a4v8", "a3v4", "a2v2"};
const char *const tool_scorer_names[TOOL_N_SCORERS] = {"none",      "knorm",        "keydiff", "manifold",
                                                       "manifold_windowed", "streaming", "triattention",
                                                       "snapkv",    "observed"};

int tool_scorer_index(const char *s)
{
    for (int i = 0; i < TOOL_N_SCORERS; i++)
        if (strcmp(s, tool_scorer_names[i]) == 0)
            return i;
    return -1;
}

int tool_tier_index(const char *s, size_t len)
{
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (strlen(tool_tier_names[t]) == len && strncmp(s, tool_tier_names[t], len) == 0)
            return t;
    return -1;
}

int tool_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int tool_parse_u32_list(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, int max, int *n)
{
    char buf[512];
    if (strlen(s) >= sizeof buf)
        return -1;
    snprintf(buf, sizeof buf, "%s", s);
    *n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == max || tool_parse_u32(tok, lo, hi, &out[*n]) != 0)
            return -1;
        ++*n;
    }
    return *n ? 0 : -1;
}

double tool_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int tool_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int tool_write_file(const char *path, const char *text)
{
    return tool_write_bytes(path, text, strlen(text));
}

skv_status tool_open_context(const char *cmd, const char *device, int profiling, skv_context **ctx,
                             skv_device_profile *prof)
{
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = device;
    cd.enable_profiling = profiling;
    skv_status st = skv_context_create(&cd, ctx);
    if (st == SKV_OK)
        st = skv_context_device(*ctx, prof);
    if (st != SKV_OK)
        fprintf(stderr, "skv %s: %s: %s\n", cmd, skv_status_str(st), skv_last_error());
    return st;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return tool_usage_error(usage, "missing command");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("skv %s\n", skv_version_string());
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name) != 0)
            continue;
        for (int a = 2; a < argc; a++)
            if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
                commands[i].usage(stdout);
                return 0;
            }
        return commands[i].run(argc - 1, argv + 1);
    }
    return tool_usage_error(usage, "unknown command '%s'", argv[1]);
}
