/* `skv kernels`: every OpenCL program skv would build for a device profile, with the
 * exact options, from the library's own build code (a build-list context: caches are
 * created, nothing is compiled). Offline compilers and simulators read this list
 * (tests/offline_gpu.py) instead of restating the host's define sets. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "skv_tool.h"

void usage_kernels(FILE *out)
{
    fprintf(out,
            "usage: skv kernels [options]\n"
            "  Lists every OpenCL program skv builds for a device profile: its embedded\n"
            "  sources, the exact build options and the kernels created from it. Caches are\n"
            "  created over a grid of shapes (every tier, RDR, each scorer) on a build-list\n"
            "  context, which runs the host's own build code but compiles nothing, so the\n"
            "  list is what the library would ask that device's compiler for.\n"
            "  --profile P         nvidia, amd, intel (a typical GPU of that vendor, as its\n"
            "                      driver reports it) or device (the selected device as is);\n"
            "                      default nvidia\n"
            "  --head-dims LIST    default 64,128,256\n"
            "  --groups LIST       q-heads per kv-head, default 1,3,4,8\n"
            "  --page-tokens LIST  default 16,64\n"
            "  --json FILE         the list as JSON ('-' for stdout, the default): name,\n"
            "                      options, kernels, and with --source-dir the file\n"
            "  --source-dir DIR    write each program's full text (prelude and parts, as\n"
            "                      compiled) to DIR/NNNN.cl\n"
            "  --device SEL        the device the build-list context runs on (default: skv's\n"
            "                      choice; nothing is compiled for it)\n");
}

#define MAX_LIST 8

/* A comma-separated list of integers in lo..hi. */
static int parse_list(const char *s, uint32_t lo, uint32_t hi, uint32_t *out, size_t *n)
{
    *n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        char item[16];
        if (*n == MAX_LIST || len == 0 || len >= sizeof item)
            return -1;
        memcpy(item, s, len);
        item[len] = '\0';
        if (tool_parse_u32(item, lo, hi, &out[(*n)++]) != 0)
            return -1;
        s += len + (s[len] == ',');
    }
    return *n ? 0 : -1;
}

/* Creates (and destroys) the caches of one shape: RDR over every tier with each scorer,
 * and a uniform cache without one. */
static skv_status shape_caches(skv_context *ctx, uint32_t head_dim, uint32_t group, uint32_t page_tokens)
{
    enum { KV_HEADS = 2 };
    float *mean = calloc((size_t)group * KV_HEADS * head_dim, sizeof *mean);
    float *abs_ = calloc((size_t)group * KV_HEADS * head_dim / 2, sizeof *abs_);
    if (!mean || !abs_) {
        free(mean);
        free(abs_);
        return SKV_ERR_OUT_OF_MEMORY;
    }
    skv_status st = SKV_OK;
    for (int scorer = SKV_SCORER_NONE; st == SKV_OK && scorer <= SKV_SCORER_OBSERVED; scorer++) {
        skv_cache_desc d;
        skv_cache_desc_init(&d);
        d.layers = 1;
        d.kv_heads = KV_HEADS;
        d.q_heads = group * KV_HEADS;
        d.head_dim = head_dim;
        d.page_tokens = page_tokens;
        d.device_budget_bytes = 64u << 20;
        d.tiers = (1u << SKV_TIER_COUNT) - 1;
        d.scorer = (skv_scorer)scorer;
        d.retention = scorer == SKV_SCORER_NONE ? SKV_RETENTION_NONE : SKV_RETENTION_RDR;
        d.budget_ratio = 0.25f;
        d.rope.theta = 10000.0f;
        d.rope.rotary_dims = head_dim;
        d.rope.scaling = 1.0f;
        d.query_mean = mean;
        d.query_abs = abs_;
        skv_cache *c = NULL;
        st = skv_cache_create(ctx, &d, &c);
        skv_cache_destroy(c);
    }
    free(mean);
    free(abs_);
    return st;
}

int cmd_kernels(int argc, char **argv)
{
    const char *profile = "nvidia", *json_path = "-", *source_dir = NULL, *device = NULL;
    uint32_t dims[MAX_LIST] = {64, 128, 256}, groups[MAX_LIST] = {1, 3, 4, 8}, pages[MAX_LIST] = {16, 64};
    size_t n_dims = 3, n_groups = 4, n_pages = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return tool_usage_error(usage_kernels, "%s needs a value (or is unknown)", a);
        if (strcmp(a, "--profile") == 0)
            profile = v;
        else if (strcmp(a, "--json") == 0)
            json_path = v;
        else if (strcmp(a, "--source-dir") == 0)
            source_dir = v;
        else if (strcmp(a, "--device") == 0)
            device = v;
        else if (strcmp(a, "--head-dims") == 0) {
            if (parse_list(v, 64, 256, dims, &n_dims) != 0)
                return tool_usage_error(usage_kernels, "--head-dims: a list of 64, 128, 256");
        } else if (strcmp(a, "--groups") == 0) {
            if (parse_list(v, 1, 64, groups, &n_groups) != 0)
                return tool_usage_error(usage_kernels, "--groups: a list of integers in 1..64");
        } else if (strcmp(a, "--page-tokens") == 0) {
            if (parse_list(v, 16, 256, pages, &n_pages) != 0)
                return tool_usage_error(usage_kernels, "--page-tokens: a list of powers of two in 16..256");
        } else
            return tool_usage_error(usage_kernels, "unknown option %s", a);
        i++;
    }
    if (source_dir && mkdir(source_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "skv kernels: cannot create %s: %s\n", source_dir, strerror(errno));
        return 1;
    }
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = device;
    cd.build_list = profile;
    cd.disable_program_cache = 1;
    skv_context *ctx = NULL;
    cJSON *root = NULL;
    int rc = 1;
    TOOL_CHECK("kernels", done, skv_context_create(&cd, &ctx));
    TOOL_CHECK("kernels", done, skv_context_prepare(ctx));
    for (size_t a = 0; a < n_dims; a++)
        for (size_t b = 0; b < n_groups; b++)
            for (size_t c = 0; c < n_pages; c++) {
                tool_progress("kernels: head_dim %u, group %u, page %u", dims[a], groups[b], pages[c]);
                TOOL_CHECK("kernels", done, shape_caches(ctx, dims[a], groups[b], pages[c]));
            }
    tool_progress("");
    size_t count = 0;
    TOOL_CHECK("kernels", done, skv_context_build_list(ctx, &count));
    skv_device_profile prof;
    TOOL_CHECK("kernels", done, skv_context_device(ctx, &prof));
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "profile", profile);
    cJSON_AddStringToObject(root, "device", prof.name);
    cJSON_AddStringToObject(root, "vendor_class", skv_vendor_class_str(prof.vendor_class));
    cJSON *list = cJSON_AddArrayToObject(root, "programs");
    for (size_t i = 0; i < count; i++) {
        skv_program_record r = {.struct_size = sizeof r};
        TOOL_CHECK("kernels", done, skv_context_build_record(ctx, i, &r));
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", r.name);
        cJSON_AddStringToObject(o, "options", r.options);
        cJSON_AddStringToObject(o, "kernels", r.kernels);
        if (source_dir) {
            char path[1200];
            snprintf(path, sizeof path, "%s/%04zu.cl", source_dir, i);
            if (tool_write_file(path, r.source) != 0) {
                fprintf(stderr, "skv kernels: cannot write %s\n", path);
                cJSON_Delete(o);
                goto done;
            }
            cJSON_AddStringToObject(o, "file", path);
        }
        cJSON_AddItemToArray(list, o);
    }
    char *text = cJSON_Print(root);
    if (text && tool_write_file(json_path, text) == 0) {
        rc = 0;
        fprintf(stderr, "skv kernels: %zu programs for %s (%s)\n", count, profile, prof.name);
    } else {
        fprintf(stderr, "skv kernels: cannot write %s\n", json_path);
    }
    free(text);
done:
    cJSON_Delete(root);
    skv_context_destroy(ctx);
    return rc;
}
