/* Kernel variants and the tuning database: which decode schedule and parameters a cache
 * takes on a device (include/skv/skv.h, "kernel variants and the tuning database").
 *
 * Lookup, as CLBlast does it: an entry for this exact device and driver, else for its
 * architecture, else for its vendor class, else the built-in default derived from what
 * the device reports. The context's override comes first of all. The database file is
 * JSON (cJSON), read once when the context is created:
 *
 *   {"format": "skv-tuning", "version": 1, "entries": [
 *     {"device": "...", "driver": "...", "architecture": "haswell", "vendor": "cpu",
 *      "kernel": "decode", "tier": "a3v4", "head_dim": 128, "group": 4,
 *      "params": {"schedule": "lanes", "lanes": 8, "tile": 256, "chunks_per_cu": 4,
 *                 "f16_slots": 0},
 *      "ms": 1.7, "default_ms": 1.9}]}
 *
 * An entry names its device by any of device + driver (exact), architecture, vendor, and
 * counts at the best level it matches; tier, head_dim and group narrow it to a problem
 * class (absent: any); absent params keep the next source's values; "ms" fields are
 * informational. Anything malformed rejects the whole file. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host_internal.h"

#define MAX_FILE_BYTES (4u << 20)
#define MAX_ENTRIES 65536

const char *skv_schedule_str(skv_schedule s)
{
    switch (s) {
    case SKV_SCHEDULE_DEFAULT: return "default";
    case SKV_SCHEDULE_GROUP: return "group";
    case SKV_SCHEDULE_LANES: return "lanes";
    }
    return "invalid";
}

const char *skv_tuning_match_str(skv_tuning_match m)
{
    switch (m) {
    case SKV_TUNING_DEFAULT: return "default";
    case SKV_TUNING_VENDOR: return "vendor";
    case SKV_TUNING_ARCHITECTURE: return "architecture";
    case SKV_TUNING_EXACT: return "exact";
    case SKV_TUNING_OVERRIDE: return "override";
    }
    return "invalid";
}

/* Built-in entries, chosen by what the device reports: CPUs by the float width of the
 * vectors their kernels are compiled for (a 16-entry table lookup is one permute only
 * with 16-float vectors), GPUs by vendor. */
static const struct builtin {
    int cpu;                    /* 1: CPU devices of this vector width; 0: GPUs of this vendor */
    unsigned floats;            /* CPU */
    skv_vendor_class vendor;    /* GPU; OTHER: any GPU */
    const char *name;
    skv_decode_params p;
} builtins[] = {
    {1, 16, SKV_VENDOR_CPU, "cpu, 16-float vectors", {SKV_SCHEDULE_LANES, 16, 256, 4, 0}},
    {1, 8, SKV_VENDOR_CPU, "cpu, 8-float vectors", {SKV_SCHEDULE_LANES, 8, 256, 4, 0}},
    {1, 4, SKV_VENDOR_CPU, "cpu, 4-float vectors", {SKV_SCHEDULE_LANES, 4, 256, 4, 0}},
    {0, 0, SKV_VENDOR_NVIDIA, "nvidia gpu", {SKV_SCHEDULE_GROUP, 16, 256, 4, 0}},
    {0, 0, SKV_VENDOR_AMD, "amd gpu", {SKV_SCHEDULE_GROUP, 16, 256, 4, 0}},
    {0, 0, SKV_VENDOR_INTEL, "intel gpu", {SKV_SCHEDULE_GROUP, 16, 128, 4, 0}},
    {0, 0, SKV_VENDOR_OTHER, "gpu", {SKV_SCHEDULE_GROUP, 16, 256, 4, 0}},
};

static const struct builtin *builtin_for(const skv_device_profile *prof)
{
    const int cpu = prof->vendor_class == SKV_VENDOR_CPU;
    const size_t n = sizeof builtins / sizeof builtins[0];
    for (size_t i = 0; i < n; i++) {
        const struct builtin *b = &builtins[i];
        if (cpu && b->cpu && b->floats == prof->cpu_vector_floats)
            return b;
        if (!cpu && !b->cpu && b->vendor == prof->vendor_class)
            return b;
    }
    return cpu ? &builtins[2] : &builtins[n - 1];
}

static int is_pow2(uint32_t x)
{
    return x && !(x & (x - 1));
}

/* Checks the set fields of p (0 = unset, allowed when `partial`). */
int skvi_decode_params_check(const skv_decode_params *p, int partial, char *why, size_t n)
{
    if (p->schedule != SKV_SCHEDULE_GROUP && p->schedule != SKV_SCHEDULE_LANES &&
        !(partial && p->schedule == SKV_SCHEDULE_DEFAULT)) {
        snprintf(why, n, "schedule %d is not group or lanes", (int)p->schedule);
        return 0;
    }
    if (!(p->lanes == 16 || p->lanes == 8 || p->lanes == 4 || (partial && p->lanes == 0))) {
        snprintf(why, n, "lanes is %u, must be 16, 8 or 4", p->lanes);
        return 0;
    }
    if (!((is_pow2(p->tile) && p->tile >= 16 && p->tile <= 1024) || (partial && p->tile == 0))) {
        snprintf(why, n, "tile is %u, must be a power of two in 16..1024", p->tile);
        return 0;
    }
    if (!((p->chunks_per_cu >= 1 && p->chunks_per_cu <= 64) || (partial && p->chunks_per_cu == 0))) {
        snprintf(why, n, "chunks_per_cu is %u, must be in 1..64", p->chunks_per_cu);
        return 0;
    }
    if (!(p->f16_slots == 0 || p->f16_slots == 1 || p->f16_slots == 2 || p->f16_slots == 4 || p->f16_slots == 8)) {
        snprintf(why, n, "f16_slots is %u, must be 0, 1, 2, 4 or 8", p->f16_slots);
        return 0;
    }
    return 1;
}

/* Fields set in `over` replace those of `base`. */
void skvi_decode_params_merge(skv_decode_params *base, const skv_decode_params *over)
{
    if (over->schedule != SKV_SCHEDULE_DEFAULT)
        base->schedule = over->schedule;
    if (over->lanes)
        base->lanes = over->lanes;
    if (over->tile)
        base->tile = over->tile;
    if (over->chunks_per_cu)
        base->chunks_per_cu = over->chunks_per_cu;
    if (over->f16_slots)
        base->f16_slots = over->f16_slots;
}

/* ---- the database file ------------------------------------------------------------- */

static int json_uint(const cJSON *o, const char *key, uint32_t max, uint32_t *out, char *why, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v)
        return 1;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > max || v->valuedouble != (double)(uint32_t)v->valuedouble) {
        snprintf(why, n, "\"%s\" is not an integer in 0..%u", key, max);
        return 0;
    }
    *out = (uint32_t)v->valuedouble;
    return 1;
}

static int json_str(const cJSON *o, const char *key, const char **out, char *why, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v)
        return 1;
    if (!cJSON_IsString(v) || !v->valuestring) {
        snprintf(why, n, "\"%s\" is not a string", key);
        return 0;
    }
    *out = v->valuestring;
    return 1;
}

/* 1 when every member of object o is named in known[count]; else 0 and why says which
 * `what` ("key", "parameter") is not. */
static int only_known(const cJSON *o, const char *const *known, size_t count, const char *what, char *why, size_t n)
{
    for (const cJSON *c = o->child; c; c = c->next) {
        size_t k = 0;
        while (k < count && strcmp(c->string, known[k]) != 0)
            k++;
        if (k == count) {
            snprintf(why, n, "unknown %s \"%.64s\"", what, c->string);
            return 0;
        }
    }
    return 1;
}

/* One entry: checked whole; kept (level > 0) only when it names this device. */
static int parse_entry(const cJSON *o, const skv_device_profile *prof, skvi_tuning_entry *e, char *why, size_t n)
{
    memset(e, 0, sizeof *e);
    e->tier = -1;
    if (!cJSON_IsObject(o)) {
        snprintf(why, n, "not an object");
        return 0;
    }
    static const char *const known[] = {"device", "driver", "architecture", "vendor", "kernel", "tier",
                                        "head_dim", "group", "params", "ms", "default_ms", "context"};
    if (!only_known(o, known, sizeof known / sizeof known[0], "key", why, n))
        return 0;
    const char *device, *driver, *arch, *vendor, *kernel, *tier, *schedule;
    if (!json_str(o, "device", &device, why, n) || !json_str(o, "driver", &driver, why, n) ||
        !json_str(o, "architecture", &arch, why, n) || !json_str(o, "vendor", &vendor, why, n) ||
        !json_str(o, "kernel", &kernel, why, n) || !json_str(o, "tier", &tier, why, n))
        return 0;
    if (!kernel || strcmp(kernel, "decode") != 0) {
        snprintf(why, n, "\"kernel\" must be \"decode\"");
        return 0;
    }
    if (!(device && driver) && !arch && !vendor) {
        snprintf(why, n, "names no device (device + driver, architecture or vendor)");
        return 0;
    }
    if (tier) {
        for (int t = 0; t < SKV_TIER_COUNT; t++)
            if (strcmp(tier, skvi_tiers[t].name) == 0)
                e->tier = t;
        if (e->tier < 0) {
            snprintf(why, n, "unknown tier \"%.32s\"", tier);
            return 0;
        }
    }
    if (!json_uint(o, "head_dim", 256, &e->head_dim, why, n) || !json_uint(o, "group", 64, &e->group, why, n))
        return 0;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "params");
    if (!cJSON_IsObject(p)) {
        snprintf(why, n, "\"params\" is missing or not an object");
        return 0;
    }
    static const char *const pknown[] = {"schedule", "lanes", "tile", "chunks_per_cu", "f16_slots"};
    if (!only_known(p, pknown, sizeof pknown / sizeof pknown[0], "parameter", why, n))
        return 0;
    if (!json_str(p, "schedule", &schedule, why, n) || !json_uint(p, "lanes", 1024, &e->p.lanes, why, n) ||
        !json_uint(p, "tile", 4096, &e->p.tile, why, n) ||
        !json_uint(p, "chunks_per_cu", 4096, &e->p.chunks_per_cu, why, n) ||
        !json_uint(p, "f16_slots", 64, &e->p.f16_slots, why, n))
        return 0;
    if (schedule && strcmp(schedule, "group") == 0)
        e->p.schedule = SKV_SCHEDULE_GROUP;
    else if (schedule && strcmp(schedule, "lanes") == 0)
        e->p.schedule = SKV_SCHEDULE_LANES;
    else if (schedule) {
        snprintf(why, n, "schedule \"%.32s\" is not \"group\" or \"lanes\"", schedule);
        return 0;
    }
    if (!skvi_decode_params_check(&e->p, 1, why, n))
        return 0;
    if (device && driver && strcmp(device, prof->name) == 0 && strcmp(driver, prof->driver_version) == 0)
        e->level = SKV_TUNING_EXACT;
    else if (arch && strcmp(arch, prof->architecture) == 0)
        e->level = SKV_TUNING_ARCHITECTURE;
    else if (vendor && strcmp(vendor, skv_vendor_class_str(prof->vendor_class)) == 0)
        e->level = SKV_TUNING_VENDOR;
    snprintf(e->name, sizeof e->name, "%s%s%s", e->level == SKV_TUNING_EXACT ? device
                                               : e->level == SKV_TUNING_ARCHITECTURE ? arch
                                                                                     : vendor ? vendor : "",
             tier ? " " : "", tier ? tier : "");
    return 1;
}

/* Parses a whole file's text; on success *entries holds the entries for this device. */
static int parse_db(const skv_allocator *a, const skv_device_profile *prof, const char *text,
                    skvi_tuning_entry **entries, size_t *count, char *why, size_t n)
{
    *entries = NULL;
    *count = 0;
    cJSON *root = cJSON_ParseWithOpts(text, NULL, 1); /* 1: nothing may follow the document */
    if (!root) {
        snprintf(why, n, "not valid JSON");
        return 0;
    }
    int ok = 0;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "entries");
    if (!cJSON_IsObject(root) || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "skv-tuning") != 0)
        snprintf(why, n, "not an skv tuning database (\"format\": \"skv-tuning\")");
    else if (!cJSON_IsNumber(ver) || ver->valuedouble != SKVI_TUNING_VERSION)
        snprintf(why, n, "version is not %d", SKVI_TUNING_VERSION);
    else if (!cJSON_IsArray(list))
        snprintf(why, n, "\"entries\" is not an array");
    else if (cJSON_GetArraySize(list) > MAX_ENTRIES) /* each takes ~300 bytes here, "0," two in the file */
        snprintf(why, n, "more than %d entries", MAX_ENTRIES);
    else {
        size_t total = (size_t)cJSON_GetArraySize(list), kept = 0, i = 0;
        skvi_tuning_entry *out = total ? skvi_calloc(a, total, sizeof *out) : NULL;
        if (total && !out) {
            snprintf(why, n, "out of memory");
        } else {
            ok = 1;
            for (const cJSON *o = list->child; ok && o; o = o->next, i++) {
                char w[192];
                if (!parse_entry(o, prof, &out[kept], w, sizeof w)) {
                    snprintf(why, n, "entry %zu: %.160s", i, w);
                    ok = 0;
                } else if (out[kept].level != SKV_TUNING_DEFAULT) {
                    kept++;
                }
            }
            if (ok) {
                *entries = out;
                *count = kept;
            } else {
                skvi_free(a, out);
            }
        }
    }
    cJSON_Delete(root);
    return ok;
}

int skvi_tuning_parse(const skv_allocator *a, const skv_device_profile *prof, char *text, size_t len,
                      skvi_tuning_entry **entries, size_t *count, char *why, size_t n)
{
    *entries = NULL;
    *count = 0;
    if (len > MAX_FILE_BYTES) {
        snprintf(why, n, "larger than %u bytes", MAX_FILE_BYTES);
        return 0;
    }
    if (memchr(text, '\0', len)) {
        snprintf(why, n, "holds a NUL byte");
        return 0;
    }
    text[len] = '\0';
    return parse_db(a, prof, text, entries, count, why, n);
}

/* Reads the database file into ctx->tuning. A missing file is no database; anything
 * else wrong leaves a note and no entries. Only running out of memory fails. */
skv_status skvi_tuning_load(skv_context *ctx)
{
    skvi_tuning *tu = &ctx->tuning;
    const char *env = getenv("SKV_TUNING_DB");
    if (env && *env)
        snprintf(tu->path, sizeof tu->path, "%s", env);
    else if (ctx->cache_dir)
        snprintf(tu->path, sizeof tu->path, "%s/tuning.json", ctx->cache_dir);
    else
        return SKV_OK;
    /* non-blocking, and only a regular file: a FIFO in the folder must not stall us */
    int fd = open(tu->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return SKV_OK; /* no database: the built-in entries */
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(tu->note, sizeof tu->note, "ignored: not a regular file");
        return SKV_OK;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        snprintf(tu->note, sizeof tu->note, "ignored: could not be read");
        return SKV_OK;
    }
    char *text = skvi_alloc(ctx->alloc, MAX_FILE_BYTES + 1);
    if (!text) {
        fclose(f);
        return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_context_create: out of memory");
    }
    size_t len = fread(text, 1, MAX_FILE_BYTES + 1, f);
    int bad_read = ferror(f);
    fclose(f);
    char why[240] = "";
    if (bad_read)
        snprintf(why, sizeof why, "could not be read");
    else
        skvi_tuning_parse(ctx->alloc, &ctx->profile, text, len, &tu->entries, &tu->count, why, sizeof why);
    skvi_free(ctx->alloc, text);
    if (why[0]) {
        if (strcmp(why, "out of memory") == 0)
            return skvi_fail(ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_context_create: out of memory");
        snprintf(tu->note, sizeof tu->note, "ignored: %s", why);
    }
    return SKV_OK;
}

void skvi_tuning_release(skv_context *ctx)
{
    skvi_free(ctx->alloc, ctx->tuning.entries);
    ctx->tuning.entries = NULL;
    ctx->tuning.count = 0;
}

/* ---- lookup ---------------------------------------------------------------------------- */

void skvi_decode_params_lookup(const skv_context *ctx, skv_tier tier, uint32_t head_dim, uint32_t group,
                               skv_tuning_info *info)
{
    const skvi_tuning *tu = &ctx->tuning;
    const struct builtin *b = builtin_for(&ctx->profile);
    skv_tuning_info out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    out.decode = out.builtin = b->p;
    out.match = SKV_TUNING_DEFAULT;
    snprintf(out.source, sizeof out.source, "built-in");
    snprintf(out.entry, sizeof out.entry, "%s", b->name);
    snprintf(out.note, sizeof out.note, "%s", tu->note);
    const skvi_tuning_entry *best = NULL;
    int best_fields = -1;
    for (size_t i = 0; i < tu->count; i++) {
        const skvi_tuning_entry *e = &tu->entries[i];
        if ((e->tier >= 0 && e->tier != (int)tier) || (e->head_dim && e->head_dim != head_dim) ||
            (e->group && e->group != group))
            continue;
        const int fields = (e->tier >= 0) + (e->head_dim != 0) + (e->group != 0);
        if (!best || e->level > best->level || (e->level == best->level && fields > best_fields)) {
            best = e;
            best_fields = fields;
        }
    }
    if (best) {
        skvi_decode_params_merge(&out.decode, &best->p);
        out.match = best->level;
        out.from_file = 1;
        snprintf(out.source, sizeof out.source, "%s", tu->path);
        snprintf(out.entry, sizeof out.entry, "%s", best->name);
    }
    if (tu->has_override) {
        skvi_decode_params_merge(&out.decode, &tu->override);
        out.match = SKV_TUNING_OVERRIDE;
        out.from_file = 0;
        snprintf(out.source, sizeof out.source, "override");
    }
    /* "by group" made concrete, so the parameters name what runs */
    const uint32_t by_group = group >= 16 ? 1 : group >= 8 ? 2 : group >= 4 ? 4 : 8;
    if (!out.decode.f16_slots)
        out.decode.f16_slots = by_group;
    if (!out.builtin.f16_slots)
        out.builtin.f16_slots = by_group;
    *info = out;
}

skv_status skv_context_tuning(skv_context *ctx, skv_tier tier, uint32_t head_dim, uint32_t group,
                              skv_tuning_info *out)
{
    skvi_clear_error();
    if (!ctx || !out)
        return skvi_fail(ctx ? ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_context_tuning: ctx or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_context_tuning: out->struct_size is %zu, expected %zu", out->struct_size, sizeof *out);
    if ((unsigned)tier >= SKV_TIER_COUNT)
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_context_tuning: tier %d", (int)tier);
    skvi_decode_params_lookup(ctx, tier, head_dim, group, out);
    return SKV_OK;
}

skv_status skv_context_tuning_path(const skv_context *ctx, char *buf, size_t size)
{
    skvi_clear_error();
    if (!ctx || !buf || !size)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_tuning_path: ctx or buf is NULL, or size is 0");
    size_t n = strlen(ctx->tuning.path);
    if (n >= size) {
        buf[0] = '\0';
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_tuning_path: the path needs %zu bytes, got %zu",
                         n + 1, size);
    }
    memcpy(buf, ctx->tuning.path, n + 1);
    return SKV_OK;
}

skv_status skv_context_set_decode_params(skv_context *ctx, const skv_decode_params *params)
{
    skvi_clear_error();
    if (!ctx)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_context_set_decode_params: ctx is NULL");
    if (!params) {
        ctx->tuning.has_override = 0;
        return SKV_OK;
    }
    char why[160];
    if (!skvi_decode_params_check(params, 1, why, sizeof why))
        return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_context_set_decode_params: %s", why);
    ctx->tuning.override = *params;
    ctx->tuning.has_override = 1;
    return SKV_OK;
}
