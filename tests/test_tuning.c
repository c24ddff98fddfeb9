/* Kernel variants and the tuning database (host/tuning.c): the built-in default on the
 * CPU device, the lookup order of the database file (exact > architecture > vendor, the
 * entry naming more of the problem among equals), whole-file rejection of malformed
 * files, the context's override, and what caches run: parameters taken when created,
 * skv_cache_set_decode_params refusing an impossible variant without changing anything,
 * and a database entry the device cannot run falling back to the built-in variant. The
 * database is read when a context is created, so every context here is created with
 * SKV_TUNING_DB set to the file under test (or to a path where there is none). */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"
#include "skv_ref.h"

static char *tmp;              /* this run's folder */
static char none[600];         /* a database path with no file */
static skv_device_profile cpu; /* the device every context here is on */

/* A context on the CPU device reading the database at `db` (NULL: none). */
static skv_context *open_ctx(const char *db)
{
    assert_int_equal(setenv("SKV_TUNING_DB", db ? db : none, 1), 0);
    skv_context_desc d;
    skv_context_desc_init(&d);
    d.device = "cpu";
    skv_context *ctx = NULL;
    skv_status st = skv_context_create(&d, &ctx);
    unsetenv("SKV_TUNING_DB");
    assert_ok(st);
    return ctx;
}

/* Writes `len` bytes to <tmp>/<name>; returns the path (static storage per call site's
 * use: copied by the caller when it needs two). */
static const char *write_file(const char *name, const char *text, size_t len)
{
    static char path[700];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static const char *write_db(const char *name, const char *text)
{
    return write_file(name, text, strlen(text));
}

/* s as the body of a JSON string. */
static void json_escape(const char *s, char *out, size_t n)
{
    size_t o = 0;
    for (; *s && o + 7 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            out[o++] = '\\', out[o++] = (char)c;
        else if (c < 0x20)
            o += (size_t)snprintf(out + o, n - o, "\\u%04x", c);
        else
            out[o++] = (char)c;
    }
    out[o] = '\0';
}

/* The JSON keys that name this device exactly, its architecture, or another device. */
static char exact_keys[1200], arch_keys[600], other_exact_keys[1200], other_driver_keys[1200];

static void make_keys(void)
{
    char name[SKV_NAME_MAX * 2], driver[SKV_NAME_MAX * 2], arch[SKV_NAME_MAX * 2];
    json_escape(cpu.name, name, sizeof name);
    json_escape(cpu.driver_version, driver, sizeof driver);
    json_escape(cpu.architecture, arch, sizeof arch);
    snprintf(exact_keys, sizeof exact_keys, "\"device\": \"%s\", \"driver\": \"%s\"", name, driver);
    snprintf(arch_keys, sizeof arch_keys, "\"architecture\": \"%s\"", arch);
    snprintf(other_exact_keys, sizeof other_exact_keys, "\"device\": \"not %s\", \"driver\": \"%s\"", name, driver);
    snprintf(other_driver_keys, sizeof other_driver_keys, "\"device\": \"%s\", \"driver\": \"not %s\"", name, driver);
}

static void tuning(skv_context *ctx, skv_tier tier, uint32_t head_dim, uint32_t group, skv_tuning_info *info)
{
    memset(info, 0x5A, sizeof *info);
    info->struct_size = sizeof *info;
    assert_ok(skv_context_tuning(ctx, tier, head_dim, group, info));
}

static skv_decode_params builtin_params(void)
{
    skv_context *ctx = open_ctx(NULL);
    skv_tuning_info info;
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    skv_context_destroy(ctx);
    return info.decode;
}

static void assert_params_equal(const skv_decode_params *a, const skv_decode_params *b)
{
    if (a->schedule != b->schedule || a->lanes != b->lanes || a->tile != b->tile ||
        a->chunks_per_cu != b->chunks_per_cu || a->f16_slots != b->f16_slots)
        fail_msg("params {%s, lanes %u, tile %u, chunks %u, f16 %u} != {%s, lanes %u, tile %u, chunks %u, f16 %u}",
                 skv_schedule_str(a->schedule), a->lanes, a->tile, a->chunks_per_cu, a->f16_slots,
                 skv_schedule_str(b->schedule), b->lanes, b->tile, b->chunks_per_cu, b->f16_slots);
}

/* The built-in entry and no file behind it. */
static void assert_builtin(const skv_tuning_info *info, const skv_decode_params *builtin)
{
    assert_int_equal(info->match, SKV_TUNING_DEFAULT);
    assert_int_equal(info->from_file, 0);
    assert_string_equal(info->source, "built-in");
    assert_params_equal(&info->decode, builtin);
}

/* ---- built-in -------------------------------------------------------------------------- */

static void test_builtin_default(void **state)
{
    (void)state;
    skv_context *ctx = open_ctx(NULL);
    assert_true(cpu.cpu_vector_floats == 16 || cpu.cpu_vector_floats == 8 || cpu.cpu_vector_floats == 4);
    const uint32_t dims[] = {64, 128, 256}, groups[] = {1, 4, 8};
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int i = 0; i < 3; i++) {
            skv_tuning_info info;
            tuning(ctx, (skv_tier)t, dims[i], groups[i], &info);
            assert_int_equal(info.match, SKV_TUNING_DEFAULT);
            assert_int_equal(info.from_file, 0);
            assert_string_equal(info.source, "built-in");
            assert_string_equal(info.note, "");
            assert_int_equal(info.decode.schedule, SKV_SCHEDULE_LANES);
            assert_int_equal(info.decode.lanes, cpu.cpu_vector_floats);
            assert_true(info.decode.chunks_per_cu >= 1 && info.decode.chunks_per_cu <= 64);
            assert_non_null(strstr(info.entry, "cpu"));
        }
    char path[1024];
    assert_ok(skv_context_tuning_path(ctx, path, sizeof path));
    assert_string_equal(path, none);
    /* what a caller gets wrong */
    skv_tuning_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info - 1;
    assert_int_equal(skv_context_tuning(ctx, SKV_TIER_F16, 128, 4, &info), SKV_ERR_INVALID_ARG);
    info.struct_size = sizeof info;
    assert_int_equal(skv_context_tuning(ctx, (skv_tier)SKV_TIER_COUNT, 128, 4, &info), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_context_tuning(NULL, SKV_TIER_F16, 128, 4, &info), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_context_tuning(ctx, SKV_TIER_F16, 128, 4, NULL), SKV_ERR_INVALID_ARG);
    skv_context_destroy(ctx);
}

/* Where the database is looked for: $SKV_TUNING_DB, else tuning.json in the program
 * cache directory (read from there), else nowhere. */
static void test_database_path(void **state)
{
    (void)state;
    char dir[700], file[800], path[1024];
    snprintf(dir, sizeof dir, "%s/cachedir", tmp);
    assert_int_equal(mkdir(dir, 0777), 0);
    snprintf(file, sizeof file, "%s/tuning.json", dir);
    char text[4096];
    snprintf(text, sizeof text,
             "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": [{%s, \"kernel\": \"decode\", \"params\": "
             "{\"chunks_per_cu\": 17}}]}",
             exact_keys);
    FILE *f = fopen(file, "wb");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);

    unsetenv("SKV_TUNING_DB");
    skv_context_desc d;
    skv_context_desc_init(&d);
    d.device = "cpu";
    d.program_cache_dir = dir;
    skv_context *ctx;
    assert_ok(skv_context_create(&d, &ctx));
    assert_ok(skv_context_tuning_path(ctx, path, sizeof path));
    assert_string_equal(path, file);
    skv_tuning_info info;
    tuning(ctx, SKV_TIER_A3V4, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.decode.chunks_per_cu, 17);
    assert_string_equal(info.source, file);
    char small[8];
    assert_int_equal(skv_context_tuning_path(ctx, small, sizeof small), SKV_ERR_INVALID_ARG);
    assert_string_equal(small, "");
    assert_int_equal(skv_context_tuning_path(ctx, NULL, 10), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_context_tuning_path(NULL, path, sizeof path), SKV_ERR_INVALID_ARG);
    skv_context_destroy(ctx);

    /* no program cache and no $SKV_TUNING_DB: no database at all */
    skv_context_desc_init(&d);
    d.device = "cpu";
    d.disable_program_cache = 1;
    assert_ok(skv_context_create(&d, &ctx));
    assert_ok(skv_context_tuning_path(ctx, path, sizeof path));
    assert_string_equal(path, "");
    tuning(ctx, SKV_TIER_A3V4, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_DEFAULT);
    skv_context_destroy(ctx);
}

/* ---- the lookup order ------------------------------------------------------------------ */

#define DB_HEAD "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": ["
#define ENTRY(who, rest) "{" who ", \"kernel\": \"decode\", " rest "}"

static void test_lookup_order(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    char vendor_entries[1024], arch_entries[2048], exact_entries[12000], text[12500];
    snprintf(vendor_entries, sizeof vendor_entries,
             ENTRY("\"vendor\": \"cpu\"", "\"params\": {\"chunks_per_cu\": 3}") ", "
             ENTRY("\"vendor\": \"cpu\"", "\"tier\": \"a3v4\", \"params\": {\"chunks_per_cu\": 5}") ", "
             ENTRY("\"vendor\": \"nvidia\"", "\"params\": {\"schedule\": \"group\", \"chunks_per_cu\": 60}"));
    snprintf(arch_entries, sizeof arch_entries,
             "%s, " ENTRY("%s", "\"params\": {\"chunks_per_cu\": 6}") ", "
             ENTRY("\"architecture\": \"no such architecture\"", "\"tier\": \"f16\", \"params\": {\"chunks_per_cu\": 61}"),
             vendor_entries, arch_keys);
    snprintf(exact_entries, sizeof exact_entries,
             "%s, "
             ENTRY("%s", "\"tier\": \"a2v2\", \"params\": {\"lanes\": 4, \"chunks_per_cu\": 7}") ", "
             ENTRY("%s", "\"tier\": \"a2v2\", \"head_dim\": 128, \"group\": 4, \"params\": {\"chunks_per_cu\": 9}") ", "
             ENTRY("%s", "\"tier\": \"a2v2\", \"head_dim\": 64, \"params\": {\"chunks_per_cu\": 11}") ", "
             ENTRY("%s", "\"tier\": \"f16\", \"params\": {\"chunks_per_cu\": 62}") ", "
             ENTRY("%s", "\"params\": {\"chunks_per_cu\": 63}"),
             arch_entries, exact_keys, exact_keys, exact_keys, other_exact_keys, other_driver_keys);
    skv_tuning_info info;

    /* vendor entries only: the vendor class, the one naming the tier where it matches */
    snprintf(text, sizeof text, DB_HEAD "%s]}", vendor_entries);
    char path[700];
    snprintf(path, sizeof path, "%s", write_db("vendor.json", text));
    skv_context *ctx = open_ctx(path);
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_VENDOR);
    assert_int_equal(info.from_file, 1);
    assert_string_equal(info.source, path);
    assert_string_equal(info.note, "");
    assert_string_equal(info.entry, "cpu");
    assert_int_equal(info.decode.chunks_per_cu, 3);
    assert_int_equal(info.decode.schedule, builtin.schedule); /* absent params keep the built-in's */
    assert_int_equal(info.decode.lanes, builtin.lanes);
    assert_int_equal(info.decode.tile, builtin.tile);
    tuning(ctx, SKV_TIER_A3V4, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_VENDOR);
    assert_string_equal(info.entry, "cpu a3v4");
    assert_int_equal(info.decode.chunks_per_cu, 5);
    skv_context_destroy(ctx);

    /* + architecture entries: the architecture beats the vendor, even its tier entry */
    snprintf(text, sizeof text, DB_HEAD "%s]}", arch_entries);
    snprintf(path, sizeof path, "%s", write_db("arch.json", text));
    ctx = open_ctx(path);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        tuning(ctx, (skv_tier)t, 128, 4, &info);
        assert_int_equal(info.match, SKV_TUNING_ARCHITECTURE);
        assert_string_equal(info.entry, cpu.architecture);
        assert_int_equal(info.decode.chunks_per_cu, 6);
    }
    skv_context_destroy(ctx);

    /* + exact entries: this device and driver beat the rest; among them the entry that
     * names more of the class; entries for another device or driver are not used */
    snprintf(text, sizeof text, DB_HEAD "%s]}", exact_entries);
    snprintf(path, sizeof path, "%s", write_db("exact.json", text));
    ctx = open_ctx(path);
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_ARCHITECTURE);
    assert_int_equal(info.decode.chunks_per_cu, 6);
    tuning(ctx, SKV_TIER_A3V4, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_ARCHITECTURE);
    tuning(ctx, SKV_TIER_A2V2, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.from_file, 1);
    assert_int_equal(info.decode.chunks_per_cu, 9);
    assert_int_equal(info.decode.lanes, builtin.lanes); /* only the best entry's params merge */
    char want[300];
    snprintf(want, sizeof want, "%s a2v2", cpu.name);
    assert_string_equal(info.entry, want);
    tuning(ctx, SKV_TIER_A2V2, 64, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.decode.chunks_per_cu, 11);
    tuning(ctx, SKV_TIER_A2V2, 256, 4, &info);
    assert_int_equal(info.decode.chunks_per_cu, 7);
    assert_int_equal(info.decode.lanes, 4);
    tuning(ctx, SKV_TIER_A2V2, 128, 8, &info); /* the group narrows too */
    assert_int_equal(info.decode.chunks_per_cu, 7);

    /* a cache created now runs what the lookup says, per tier */
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = 8, d.kv_heads = 2, d.head_dim = 128, d.tiers = 0xF;
    d.device_budget_bytes = 16u << 20;
    skv_cache *c;
    assert_ok(skv_cache_create(ctx, &d, &c));
    skv_decode_params p;
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &p));
    assert_int_equal(p.chunks_per_cu, 6);
    assert_ok(skv_cache_decode_params(c, SKV_TIER_A2V2, &p));
    assert_int_equal(p.chunks_per_cu, 9);
    assert_int_equal(p.lanes, builtin.lanes);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
}

/* Entries that name other devices only: a valid file, nothing in it for this one. */
static void test_other_devices_not_used(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    char text[4096];
    snprintf(text, sizeof text,
             DB_HEAD ENTRY("%s", "\"params\": {\"chunks_per_cu\": 2}") ", "
             ENTRY("%s", "\"params\": {\"chunks_per_cu\": 2}") ", "
             ENTRY("\"architecture\": \"no such architecture\"", "\"params\": {\"chunks_per_cu\": 2}") ", "
             ENTRY("\"vendor\": \"nvidia\"", "\"params\": {\"chunks_per_cu\": 2}") ", "
             ENTRY("\"vendor\": \"amd\", \"architecture\": \"gfx90a\"", "\"params\": {\"chunks_per_cu\": 2}") ", "
             ENTRY("\"device\": \"no such device\"", "\"vendor\": \"intel\", \"params\": {\"chunks_per_cu\": 2}") "]}",
             other_exact_keys, other_driver_keys);
    skv_context *ctx = open_ctx(write_db("others.json", text));
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        skv_tuning_info info;
        tuning(ctx, (skv_tier)t, 128, 4, &info);
        assert_builtin(&info, &builtin);
        assert_string_equal(info.note, "");
    }
    skv_context_destroy(ctx);
}

/* ---- malformed files ------------------------------------------------------------------- */

/* Each is ignored whole: the note says why, every tier gets the built-in parameters,
 * although each file also holds a valid exact entry for this device. */
static void expect_ignored(const char *path, const char *why, const skv_decode_params *builtin)
{
    skv_context *ctx = open_ctx(path);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        skv_tuning_info info;
        tuning(ctx, (skv_tier)t, 128, 4, &info);
        if (info.match != SKV_TUNING_DEFAULT)
            fail_msg("%s: used (match %s), expected to be ignored with \"%s\"", path,
                     skv_tuning_match_str(info.match), why);
        assert_builtin(&info, builtin);
        if (strncmp(info.note, "ignored: ", 9) != 0 || !strstr(info.note, why))
            fail_msg("%s: note \"%s\", expected \"ignored: ...%s...\"", path, info.note, why);
    }
    skv_context_destroy(ctx);
}

static void test_malformed_files(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    char good[2048];
    snprintf(good, sizeof good, ENTRY("%s", "\"params\": {\"chunks_per_cu\": 2}"), exact_keys);
    const struct {
        const char *name, *head, *bad_entry, *tail, *why;
    } cases[] = {
        {"json", DB_HEAD, "", "", "not valid JSON"}, /* unterminated */
        {"json2", DB_HEAD, "", "]} trailing", "not valid JSON"},
        {"format", "{\"format\": \"skv-tuning-2\", \"version\": 1, \"entries\": [", "", "]}", "not an skv tuning database"},
        {"noformat", "{\"version\": 1, \"entries\": [", "", "]}", "not an skv tuning database"},
        {"array", "[{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": [", "", "]}]", "not an skv tuning database"},
        {"version", "{\"format\": \"skv-tuning\", \"version\": 2, \"entries\": [", "", "]}", "version is not 1"},
        {"version_string", "{\"format\": \"skv-tuning\", \"version\": \"1\", \"entries\": [", "", "]}",
         "version is not 1"},
        {"entries", "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": {\"a\": [", "", "]}}",
         "\"entries\" is not an array"},
        {"key", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"colour\": \"red\", \"params\": {}}", "]}",
         "unknown key \"colour\""},
        {"param", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"warp\": 32}}", "]}",
         "unknown parameter \"warp\""},
        {"lanes", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"lanes\": 7}}", "]}",
         "lanes is 7"},
        {"tile", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"tile\": 100}}", "]}",
         "tile is 100"},
        {"chunks", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"chunks_per_cu\": 65}}",
         "]}", "chunks_per_cu is 65"},
        {"slots", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"f16_slots\": 3}}", "]}",
         "f16_slots is 3"},
        {"schedule", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"schedule\": \"warp\"}}",
         "]}", "schedule \"warp\""},
        {"nodevice", DB_HEAD, ", {\"kernel\": \"decode\", \"tier\": \"f16\", \"params\": {}}", "]}", "names no device"},
        {"nodriver", DB_HEAD, ", {\"device\": \"x\", \"kernel\": \"decode\", \"params\": {}}", "]}", "names no device"},
        {"kernel", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"prefill\", \"params\": {}}", "]}",
         "\"kernel\" must be \"decode\""},
        {"tier", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"tier\": \"a1v1\", \"params\": {}}", "]}",
         "unknown tier"},
        {"head_dim", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"head_dim\": 1.5, \"params\": {}}",
         "]}", "\"head_dim\" is not an integer"},
        {"noparams", DB_HEAD, ", {\"vendor\": \"cpu\", \"kernel\": \"decode\"}", "]}", "\"params\" is missing"},
        {"string", DB_HEAD, ", {\"vendor\": 3, \"kernel\": \"decode\", \"params\": {}}", "]}", "\"vendor\" is not a string"},
    };
    char text[4096], name[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(text, sizeof text, "%s%s%s%s", cases[i].head, good, cases[i].bad_entry, cases[i].tail);
        snprintf(name, sizeof name, "bad_%s.json", cases[i].name);
        expect_ignored(write_db(name, text), cases[i].why, &builtin);
    }

    /* a NUL byte (inside the whitespace of an otherwise valid file) */
    snprintf(text, sizeof text, DB_HEAD "%s] }", good);
    size_t len = strlen(text);
    text[len - 2] = '\0';
    expect_ignored(write_file("bad_nul.json", text, len), "holds a NUL byte", &builtin);

    /* over 4 MiB (valid JSON padded with spaces) */
    const size_t big = (4u << 20) + 16;
    char *huge = malloc(big);
    assert_non_null(huge);
    snprintf(text, sizeof text, DB_HEAD "%s]", good);
    len = strlen(text);
    memcpy(huge, text, len);
    memset(huge + len, ' ', big - len - 1);
    huge[big - 1] = '}';
    expect_ignored(write_file("bad_big.json", huge, big), "larger than", &builtin);

    /* over 65536 entries (2 bytes each: the entries alone would take 290 times the file) */
    snprintf(text, sizeof text, DB_HEAD "%s", good);
    len = strlen(text);
    memcpy(huge, text, len);
    for (int i = 0; i < 65536; i++, len += 2)
        memcpy(huge + len, ",0", 2);
    memcpy(huge + len, "]}", 2);
    expect_ignored(write_file("bad_count.json", huge, len + 2), "more than 65536 entries", &builtin);

    /* a FIFO (or a folder) where the file should be: ignored, and never waited on */
    char fifo[700];
    snprintf(fifo, sizeof fifo, "%s/fifo.json", tmp);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    alarm(300); /* a hang is a failure, not a stuck test run */
    expect_ignored(fifo, "not a regular file", &builtin);
    expect_ignored(tmp, "not a regular file", &builtin);
    alarm(0);
    unlink(fifo);
    free(huge);

    /* the same good entry alone is used: what made each file bad was the rest */
    snprintf(text, sizeof text, DB_HEAD "%s]}", good);
    skv_context *ctx = open_ctx(write_db("good.json", text));
    skv_tuning_info info;
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.decode.chunks_per_cu, 2);
    skv_context_destroy(ctx);
}

/* ---- the override ---------------------------------------------------------------------- */

static void test_override(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    char text[4096];
    snprintf(text, sizeof text,
             DB_HEAD ENTRY("%s", "\"tier\": \"a2v2\", \"params\": {\"chunks_per_cu\": 9, \"f16_slots\": 4}") "]}",
             exact_keys);
    skv_context *ctx = open_ctx(write_db("override.json", text));
    const skv_decode_params bad[] = {
        {(skv_schedule)3, 0, 0, 0, 0}, {SKV_SCHEDULE_LANES, 7, 0, 0, 0}, {SKV_SCHEDULE_LANES, 32, 0, 0, 0},
        {0, 0, 100, 0, 0},             {0, 0, 2048, 0, 0},               {0, 0, 8, 0, 0},
        {0, 0, 0, 65, 0},              {0, 0, 0, 0, 3},                  {0, 0, 0, 0, 16},
    };
    skv_tuning_info info;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) { /* refused, nothing set */
        assert_int_equal(skv_context_set_decode_params(ctx, &bad[i]), SKV_ERR_INVALID_ARG);
        assert_non_null(strstr(skv_last_error(), "skv_context_set_decode_params"));
        tuning(ctx, SKV_TIER_A2V2, 128, 4, &info);
        assert_int_equal(info.match, SKV_TUNING_EXACT);
        assert_int_equal(info.decode.chunks_per_cu, 9);
    }
    /* fields set override the database's choice, fields left 0 keep it */
    const skv_decode_params over = {SKV_SCHEDULE_LANES, 4, 0, 2, 0};
    assert_ok(skv_context_set_decode_params(ctx, &over));
    tuning(ctx, SKV_TIER_A2V2, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_OVERRIDE);
    assert_int_equal(info.from_file, 0);
    assert_string_equal(info.source, "override");
    assert_int_equal(info.decode.lanes, 4);
    assert_int_equal(info.decode.chunks_per_cu, 2);
    assert_int_equal(info.decode.f16_slots, 4); /* the file's */
    assert_int_equal(info.decode.tile, builtin.tile);
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_OVERRIDE);
    assert_int_equal(info.decode.f16_slots, builtin.f16_slots);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) { /* a bad one keeps the override in place */
        assert_int_equal(skv_context_set_decode_params(ctx, &bad[i]), SKV_ERR_INVALID_ARG);
        tuning(ctx, SKV_TIER_A2V2, 128, 4, &info);
        assert_int_equal(info.match, SKV_TUNING_OVERRIDE);
        assert_int_equal(info.decode.lanes, 4);
        assert_int_equal(info.decode.chunks_per_cu, 2);
    }
    assert_ok(skv_context_set_decode_params(ctx, NULL)); /* removed */
    tuning(ctx, SKV_TIER_A2V2, 128, 4, &info);
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.decode.chunks_per_cu, 9);
    assert_int_equal(info.decode.lanes, builtin.lanes);
    tuning(ctx, SKV_TIER_F16, 128, 4, &info);
    assert_builtin(&info, &builtin);
    assert_int_equal(skv_context_set_decode_params(NULL, &over), SKV_ERR_INVALID_ARG);
    skv_context_destroy(ctx);
}

/* ---- caches ---------------------------------------------------------------------------- */

static skv_cache *make_cache(skv_context *ctx, uint32_t tiers)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = 1, d.q_heads = 8, d.kv_heads = 2, d.head_dim = 128, d.page_tokens = 32, d.tiers = tiers;
    d.device_budget_bytes = 16u << 20;
    skv_cache *c = NULL;
    assert_ok(skv_cache_create(ctx, &d, &c));
    return c;
}

#define N_TOKENS 300
#define ROW (2 * 128)
#define QN (8 * 128)

/* Appends N_TOKENS fp16-exact tokens; k and v keep them. */
static void fill(skv_cache *c, skv_seq_id *s, float *k, float *v)
{
    test_rng r = {4242};
    int32_t pos[N_TOKENS];
    for (size_t i = 0; i < (size_t)N_TOKENS * ROW; i++) {
        k[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r)));
        v[i] = skv_ref_f16_to_f32(skv_ref_f32_to_f16(test_gauss(&r) * 0.5f + 0.25f));
    }
    for (int i = 0; i < N_TOKENS; i++)
        pos[i] = i;
    assert_ok(skv_seq_create(c, s));
    assert_ok(skv_append(c, *s, 0, N_TOKENS, SKV_F32, k, v, pos));
}

/* Decode output and its relative L2 error from fp64 attention over the F16 keys and values. */
static double decode_error(skv_cache *c, skv_seq_id s, const float *k, const float *v, float *out)
{
    float q[QN];
    double ref[QN];
    test_rng r = {99};
    for (int i = 0; i < QN; i++)
        q[i] = test_gauss(&r);
    const float scale = 1.0f / sqrtf(128.0f);
    memset(out, 0xFF, QN * sizeof *out);
    assert_ok(skv_attention_decode(c, 0, &s, 1, SKV_F32, q, scale, SKV_F32, out));
    assert_int_equal(skv_ref_attention_decode(q, k, v, N_TOKENS, 8, 2, 128, scale, ref), 0);
    return skv_ref_rel_l2(ref, out, QN);
}

/* A cache created under an override runs those parameters; one created after the
 * override is removed runs the built-in ones; the first keeps its own. */
static void test_cache_under_override(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    skv_context *ctx = open_ctx(NULL);
    const skv_decode_params over = {SKV_SCHEDULE_LANES, 4, 64, 3, 2};
    assert_ok(skv_context_set_decode_params(ctx, &over));
    skv_cache *c = make_cache(ctx, (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4));
    skv_decode_params p;
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &p));
    assert_params_equal(&p, &over);
    assert_ok(skv_cache_decode_params(c, SKV_TIER_A3V4, &p));
    assert_params_equal(&p, &over);
    assert_int_equal(skv_cache_decode_params(c, SKV_TIER_A2V2, &p), SKV_ERR_INVALID_ARG); /* not in the cache */
    float *k = malloc((size_t)N_TOKENS * ROW * 4), *v = malloc((size_t)N_TOKENS * ROW * 4), out[QN];
    skv_seq_id s;
    fill(c, &s, k, v);
    double e = decode_error(c, s, k, v, out);
    if (!(e <= 2e-5))
        fail_msg("decode under the override: %.3g from the reference", e);

    assert_ok(skv_context_set_decode_params(ctx, NULL));
    skv_cache *c2 = make_cache(ctx, 1u << SKV_TIER_F16);
    assert_ok(skv_cache_decode_params(c2, SKV_TIER_F16, &p));
    assert_params_equal(&p, &builtin);
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &p));
    assert_params_equal(&p, &over);
    skv_cache_destroy(c2);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    free(k);
    free(v);
}

/* skv_cache_set_decode_params with a variant that cannot run (a GROUP tile must cover the
 * D/2 = 64 value pairs; 16 does not) or with bad values gives its error and changes
 * nothing: the same parameters, the same output bit for bit. A good one takes effect. */
static void test_set_params_impossible(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    skv_context *ctx = open_ctx(NULL);
    skv_cache *c = make_cache(ctx, 1u << SKV_TIER_F16);
    float *k = malloc((size_t)N_TOKENS * ROW * 4), *v = malloc((size_t)N_TOKENS * ROW * 4), out0[QN], out1[QN];
    skv_seq_id s;
    fill(c, &s, k, v);
    double e = decode_error(c, s, k, v, out0);
    assert_true(e <= 2e-5);
    skv_decode_params before, after;
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &before));
    assert_params_equal(&before, &builtin);

    const skv_decode_params impossible = {SKV_SCHEDULE_GROUP, 0, 16, 4, 0};
    assert_int_equal(skv_cache_set_decode_params(c, &impossible), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "skv_cache_set_decode_params"));
    assert_non_null(strstr(skv_last_error(), "tile"));
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &after));
    assert_params_equal(&after, &before);
    assert_true(decode_error(c, s, k, v, out1) <= 2e-5);
    assert_memory_equal(out0, out1, sizeof out0);

    const skv_decode_params bad = {SKV_SCHEDULE_LANES, 7, 0, 0, 0};
    assert_int_equal(skv_cache_set_decode_params(c, &bad), SKV_ERR_INVALID_ARG);
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &after));
    assert_params_equal(&after, &before);
    assert_int_equal(skv_cache_set_decode_params(NULL, &bad), SKV_ERR_INVALID_ARG);

    const skv_decode_params other = {SKV_SCHEDULE_LANES, builtin.lanes == 4 ? 8 : 4, 0, 2, 1};
    assert_ok(skv_cache_set_decode_params(c, &other));
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &after));
    assert_int_equal(after.lanes, other.lanes);
    assert_int_equal(after.chunks_per_cu, 2);
    assert_int_equal(after.f16_slots, 1);
    assert_int_equal(after.tile, builtin.tile);
    e = decode_error(c, s, k, v, out1);
    if (!(e <= 2e-5))
        fail_msg("decode in %s: %.3g from the reference", skv_schedule_str(after.schedule), e);
    assert_ok(skv_cache_set_decode_params(c, NULL)); /* back to the database's choice */
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &after));
    assert_params_equal(&after, &builtin);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    free(k);
    free(v);
}

/* A database entry asking for a variant the device cannot run: skv_cache_create still
 * succeeds, on the built-in variant, and says so in the context's last error. */
static void test_file_variant_falls_back(void **state)
{
    (void)state;
    const skv_decode_params builtin = builtin_params();
    char text[4096];
    snprintf(text, sizeof text,
             DB_HEAD ENTRY("%s", "\"tier\": \"f16\", \"head_dim\": 128, \"params\": {\"schedule\": \"group\", "
                                 "\"tile\": 16, \"chunks_per_cu\": 4}") "]}",
             exact_keys);
    skv_context *ctx = open_ctx(write_db("impossible.json", text));
    skv_tuning_info info;
    tuning(ctx, SKV_TIER_F16, 128, 4, &info); /* what the file asks for */
    assert_int_equal(info.match, SKV_TUNING_EXACT);
    assert_int_equal(info.decode.schedule, SKV_SCHEDULE_GROUP);
    assert_int_equal(info.decode.tile, 16);
    skv_cache *c = make_cache(ctx, 1u << SKV_TIER_F16);
    if (!strstr(skv_context_last_error(ctx), "fell back"))
        fail_msg("last error \"%s\" does not say the decode fell back", skv_context_last_error(ctx));
    skv_decode_params p;
    assert_ok(skv_cache_decode_params(c, SKV_TIER_F16, &p));
    assert_params_equal(&p, &builtin);
    float *k = malloc((size_t)N_TOKENS * ROW * 4), *v = malloc((size_t)N_TOKENS * ROW * 4), out[QN];
    skv_seq_id s;
    fill(c, &s, k, v);
    assert_true(decode_error(c, s, k, v, out) <= 2e-5);
    skv_cache_destroy(c);
    skv_context_destroy(ctx);
    free(k);
    free(v);
}

int main(void)
{
    if (skv_device_select("cpu", &cpu) != SKV_OK) {
        printf("skipped: no CPU device (%s)\n", skv_last_error());
        return SKV_TEST_SKIP;
    }
    printf("device: %s, driver %s, architecture %s, %u-float vectors\n", cpu.name, cpu.driver_version,
           cpu.architecture, cpu.cpu_vector_floats);
    tmp = test_tmpdir("tuning");
    if (!tmp) {
        fprintf(stderr, "no temporary folder\n");
        return 1;
    }
    snprintf(none, sizeof none, "%s/no-such-database.json", tmp);
    make_keys();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_default),     cmocka_unit_test(test_database_path),
        cmocka_unit_test(test_lookup_order),        cmocka_unit_test(test_other_devices_not_used),
        cmocka_unit_test(test_malformed_files),     cmocka_unit_test(test_override),
        cmocka_unit_test(test_cache_under_override), cmocka_unit_test(test_set_params_impossible),
        cmocka_unit_test(test_file_variant_falls_back),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    free(tmp);
    return failed;
}
