/* `skv info`: every OpenCL platform and device with skv's profile of it, and which
 * device skv would select (SKV_DEVICE or the default rule). */
#include <stdlib.h>
#include <string.h>

#include "skv_tool.h"

void usage_info(FILE *out)
{
    fprintf(out,
            "usage: skv info [--json] [--device SELECTOR]\n"
            "  Lists every OpenCL device with its profile and marks the one skv selects;\n"
            "  for that one, which decode parameters a cache gets per tier (head_dim 128,\n"
            "  4 q-heads per kv-head) and from where: the tuning database ($SKV_TUNING_DB,\n"
            "  else tuning.json in the program cache directory; `skv tune` writes it) at\n"
            "  match level exact, architecture or vendor, else the built-in default, and why\n"
            "  a database file was ignored.\n"
            "  --json             machine-readable output on stdout\n"
            "  --device SELECTOR  mark the device this selector picks (default: SKV_DEVICE,\n"
            "                     else the first GPU, else the CPU): cpu, gpu, nvidia, amd,\n"
            "                     intel, qualcomm, arm, apple, default, or P:D\n");
}

static cJSON *device_json(const skv_device_profile *p, int selected)
{
    cJSON *d = cJSON_CreateObject();
    char cver[32];
    snprintf(cver, sizeof cver, "%d.%d", p->opencl_c_major, p->opencl_c_minor);
    cJSON_AddStringToObject(d, "platform", p->platform);
    cJSON_AddStringToObject(d, "name", p->name);
    cJSON_AddStringToObject(d, "vendor", p->vendor);
    cJSON_AddStringToObject(d, "driver", p->driver_version);
    char idx[32];
    snprintf(idx, sizeof idx, "%u:%u", p->platform_index, p->device_index);
    cJSON_AddStringToObject(d, "index", idx);
    cJSON_AddStringToObject(d, "vendor_class", skv_vendor_class_str(p->vendor_class));
    cJSON_AddBoolToObject(d, "gpu", p->is_gpu);
    cJSON_AddStringToObject(d, "opencl_c", cver);
    cJSON_AddBoolToObject(d, "fp16", p->fp16);
    cJSON_AddStringToObject(d, "subgroups", skv_subgroups_str(p->subgroups));
    cJSON_AddNumberToObject(d, "compute_units", p->compute_units);
    cJSON_AddNumberToObject(d, "local_mem_bytes", (double)p->local_mem_bytes);
    cJSON_AddNumberToObject(d, "global_mem_bytes", (double)p->global_mem_bytes);
    cJSON_AddNumberToObject(d, "max_work_group_size", (double)p->max_work_group_size);
    cJSON_AddNumberToObject(d, "preferred_wg_multiple", (double)p->preferred_wg_multiple);
    cJSON_AddStringToObject(d, "architecture", p->architecture);
    if (!p->is_gpu)
        cJSON_AddNumberToObject(d, "cpu_vector_floats", p->cpu_vector_floats);
    cJSON_AddBoolToObject(d, "selected", selected);
    return d;
}

/* The decode parameters each tier gets on a context for the selected device: what
 * skv_context_tuning says for head_dim 128, group 4. */
#define INFO_HEAD_DIM 128
#define INFO_GROUP 4
typedef struct tuning_view {
    char path[1024]; /* the database file looked for ("" none) */
    int present;     /* it exists */
    skv_tuning_info tier[SKV_TIER_COUNT];
} tuning_view;

static int tuning_of(const char *selector, tuning_view *tv, char *err, size_t n)
{
    skv_context_desc cd;
    skv_context_desc_init(&cd);
    cd.device = selector;
    skv_context *ctx = NULL;
    skv_status st = skv_context_create(&cd, &ctx);
    if (st == SKV_OK)
        st = skv_context_tuning_path(ctx, tv->path, sizeof tv->path);
    for (int t = 0; st == SKV_OK && t < SKV_TIER_COUNT; t++) {
        tv->tier[t].struct_size = sizeof tv->tier[t];
        st = skv_context_tuning(ctx, (skv_tier)t, INFO_HEAD_DIM, INFO_GROUP, &tv->tier[t]);
    }
    if (st != SKV_OK)
        snprintf(err, n, "%s: %s", skv_status_str(st), skv_last_error());
    skv_context_destroy(ctx);
    if (st == SKV_OK && tv->path[0]) {
        FILE *f = fopen(tv->path, "rb");
        tv->present = f != NULL;
        if (f)
            fclose(f);
    }
    return st == SKV_OK ? 0 : -1;
}

static cJSON *tuning_json(const tuning_view *tv)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "head_dim", INFO_HEAD_DIM);
    cJSON_AddNumberToObject(o, "group", INFO_GROUP);
    if (tv->path[0])
        cJSON_AddStringToObject(o, "database", tv->path);
    else
        cJSON_AddNullToObject(o, "database");
    cJSON_AddBoolToObject(o, "database_present", tv->present);
    cJSON *arr = cJSON_AddArrayToObject(o, "decode");
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        const skv_tuning_info *i = &tv->tier[t];
        cJSON *e = cJSON_CreateObject();
        char name[96];
        tool_variant_name(&i->decode, t, name, sizeof name);
        cJSON_AddStringToObject(e, "tier", tool_tier_names[t]);
        cJSON_AddStringToObject(e, "variant", name);
        cJSON_AddItemToObject(e, "params", tool_variant_json(&i->decode));
        cJSON_AddStringToObject(e, "match", skv_tuning_match_str(i->match));
        cJSON_AddBoolToObject(e, "from_file", i->from_file);
        cJSON_AddStringToObject(e, "source", i->source);
        cJSON_AddStringToObject(e, "entry", i->entry);
        cJSON_AddStringToObject(e, "note", i->note);
        cJSON_AddItemToArray(arr, e);
    }
    return o;
}

static void tuning_print(const tuning_view *tv)
{
    printf("\ndecode parameters on the selected device (head_dim %d, %d q-heads per kv-head):\n", INFO_HEAD_DIM,
           INFO_GROUP);
    if (tv->path[0])
        printf("    database      %s%s\n", tv->path, tv->present ? "" : " (absent: built-in entries)");
    else
        printf("    database      none (no program cache directory, SKV_TUNING_DB unset)\n");
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        const skv_tuning_info *i = &tv->tier[t];
        char name[96];
        tool_variant_name(&i->decode, t, name, sizeof name);
        printf("    %-5s %-34s %-12s %s (%s)\n", tool_tier_names[t], name, skv_tuning_match_str(i->match),
               i->source, i->entry);
    }
    if (tv->tier[0].note[0])
        printf("    note          %s: %s\n", tv->path, tv->tier[0].note);
}

int cmd_info(int argc, char **argv)
{
    int json = 0;
    const char *selector = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            selector = argv[++i];
        else
            return tool_usage_error(usage_info, "info: unexpected argument '%s'", argv[i]);
    }
    size_t count = 0;
    skv_status st = skv_devices_list(NULL, 0, &count);
    skv_device_profile *devs = count ? calloc(count, sizeof *devs) : NULL;
    if (st == SKV_OK && count && !devs)
        st = SKV_ERR_OUT_OF_MEMORY;
    if (st == SKV_OK && count)
        st = skv_devices_list(devs, count, &count);
    if (st != SKV_OK) {
        fprintf(stderr, "skv info: %s: %s\n", skv_status_str(st), skv_last_error());
        free(devs);
        return 1;
    }
    skv_device_profile sel;
    skv_status sel_st = skv_device_select(selector, &sel);
    char sel_error[1024] = "";
    if (sel_st != SKV_OK)
        snprintf(sel_error, sizeof sel_error, "%s", skv_last_error());
    tuning_view tv;
    memset(&tv, 0, sizeof tv);
    char tuning_error[1200] = "";
    const int have_tuning = sel_st == SKV_OK && tuning_of(selector, &tv, tuning_error, sizeof tuning_error) == 0;
    int rc = 0;
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "version", skv_version_string());
        cJSON *arr = cJSON_AddArrayToObject(root, "devices");
        for (size_t i = 0; i < count; i++) {
            int selected = sel_st == SKV_OK && sel.platform_index == devs[i].platform_index &&
                           sel.device_index == devs[i].device_index;
            cJSON_AddItemToArray(arr, device_json(&devs[i], selected));
        }
        if (sel_st != SKV_OK)
            cJSON_AddStringToObject(root, "selection_error", sel_error);
        if (have_tuning)
            cJSON_AddItemToObject(root, "tuning", tuning_json(&tv));
        else if (tuning_error[0])
            cJSON_AddStringToObject(root, "tuning_error", tuning_error);
        char *text = cJSON_Print(root);
        rc = text && printf("%s\n", text) > 0 ? 0 : 1;
        free(text);
        cJSON_Delete(root);
    } else {
        printf("skv %s: %zu OpenCL device%s\n", skv_version_string(), count, count == 1 ? "" : "s");
        for (size_t i = 0; i < count; i++) {
            const skv_device_profile *p = &devs[i];
            int selected = sel_st == SKV_OK && sel.platform_index == p->platform_index &&
                           sel.device_index == p->device_index;
            printf("\n%s %u:%u  %s\n", selected ? "*" : " ", p->platform_index, p->device_index, p->name);
            printf("    platform      %s (%s)\n", p->platform, p->platform_version);
            printf("    vendor        %s [%s], driver %s\n", p->vendor,
                   skv_vendor_class_str(p->vendor_class), p->driver_version);
            printf("    opencl c      %d.%d   fp16 %s   fp64 %s   subgroups %s\n", p->opencl_c_major,
                   p->opencl_c_minor, p->fp16 ? "yes" : "no", p->fp64 ? "yes" : "no",
                   skv_subgroups_str(p->subgroups));
            printf("    compute       %u units, work-groups up to %zu (multiple of %zu)\n",
                   p->compute_units, p->max_work_group_size, p->preferred_wg_multiple);
            printf("    memory        %.1f GiB global, %.0f KiB local, %.1f GiB max allocation\n",
                   (double)p->global_mem_bytes / (1 << 30), (double)p->local_mem_bytes / 1024,
                   (double)p->max_alloc_bytes / (1 << 30));
            if (p->is_gpu)
                printf("    architecture  %s\n", p->architecture);
            else
                printf("    architecture  %s, kernels use %u-float vectors\n", p->architecture, p->cpu_vector_floats);
        }
        if (sel_st == SKV_OK)
            printf("\n* selected (%s)\n", selector ? "--device" : getenv("SKV_DEVICE") ? "SKV_DEVICE" : "default rule");
        else
            printf("\nno device selected: %s\n", sel_error);
        if (have_tuning)
            tuning_print(&tv);
        else if (tuning_error[0])
            printf("\ndecode parameters: no context on the selected device: %s\n", tuning_error);
    }
    free(devs);
    return rc ? rc : (sel_st == SKV_OK ? 0 : 1);
}
