/* Writes the seed corpora of the fuzz harnesses (fuzz/corpus/<harness>/): small valid
 * inputs and near-valid ones (truncated, one field off). Run from the repository root:
 *   build/fuzz/fuzz_make_seeds fuzz/corpus
 * The inputs of crashes the harnesses found are kept beside them under their own names. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "skv/skv.h"

static const char *root;

static void put(const char *harness, const char *name, const void *data, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, harness);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/%s/%s", root, harness, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_seeds: cannot write %s\n", path);
        exit(1);
    }
}

static void put_text(const char *harness, const char *name, const char *text) { put(harness, name, text, strlen(text)); }

static void kvfile_seed(const char *name, uint32_t version, skv_dtype dtype, uint32_t layers, uint32_t tokens,
                        uint32_t n_window, size_t cut)
{
    skv_kvfile_info in;
    skv_kvfile_info_init(&in);
    in.version = version, in.dtype = dtype, in.layers = layers, in.kv_heads = 1, in.q_heads = 2, in.head_dim = 2;
    in.tokens = tokens, in.n_queries = 1, in.n_window = n_window;
    if (n_window)
        in.rope.theta = 10000.0f;
    float x[256];
    for (int i = 0; i < 256; i++)
        x[i] = (float)(i % 17) / 4.0f - 2.0f;
    unsigned char buf[4096];
    size_t n = 0;
    if (skv_kvfile_write_memory(&in, x, x + 1, x + 2, n_window ? x + 3 : NULL, buf, sizeof buf, &n) != SKV_OK) {
        fprintf(stderr, "make_seeds: %s\n", skv_last_error());
        exit(1);
    }
    put("kvfile", name, buf, cut && cut < n ? cut : n);
}

static void diskcache_seed(const char *name, const char *key, const char *payload, int corrupt)
{
    unsigned char buf[512];
    const uint32_t version = 1, reserved = 0;
    const uint64_t size = strlen(payload), hash = XXH3_64bits(payload, size) ^ (uint64_t)corrupt;
    memcpy(buf, "SKVPBIN", 8);
    memcpy(buf + 8, &version, 4);
    memcpy(buf + 12, &reserved, 4);
    memcpy(buf + 16, key, 32);
    memcpy(buf + 48, &size, 8);
    memcpy(buf + 56, &hash, 8);
    memcpy(buf + 64, payload, size);
    put("diskcache", name, buf, 64 + size);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    root = argv[1];
    kvfile_seed("v1_f32", 1, SKV_F32, 2, 3, 0, 0);
    kvfile_seed("v2_f32_window", 2, SKV_F32, 2, 3, 1, 0);
    kvfile_seed("v2_f16_window", 2, SKV_F16, 1, 5, 2, 0);
    kvfile_seed("v2_f16_truncated", 2, SKV_F16, 1, 5, 2, 50);
    kvfile_seed("v1_header_only", 1, SKV_F32, 1, 2, 0, 36);

    const char *db = "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": [\n"
                     " {\"device\": \"pthread-haswell\", \"driver\": \"3.1\", \"kernel\": \"decode\", \"tier\": \"a3v4\",\n"
                     "  \"head_dim\": 128, \"group\": 4, \"params\": {\"schedule\": \"lanes\", \"lanes\": 8, \"tile\": 256,\n"
                     "  \"chunks_per_cu\": 4, \"f16_slots\": 0}, \"ms\": 1.7, \"default_ms\": 1.9},\n"
                     " {\"architecture\": \"haswell\", \"kernel\": \"decode\", \"tier\": \"f16\",\n"
                     "  \"params\": {\"schedule\": \"group\", \"tile\": 64}},\n"
                     " {\"vendor\": \"cpu\", \"kernel\": \"decode\", \"params\": {\"chunks_per_cu\": 2}, \"context\": 4096},\n"
                     " {\"vendor\": \"nvidia\", \"kernel\": \"decode\", \"params\": {\"lanes\": 16}}]}\n";
    put_text("tuning", "valid", db);
    put_text("tuning", "empty_entries", "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": []}");
    put_text("tuning", "bad_tile",
             "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": [{\"vendor\": \"cpu\", \"kernel\": \"decode\", "
             "\"params\": {\"tile\": 100}}]}");
    put_text("tuning", "unknown_key",
             "{\"format\": \"skv-tuning\", \"version\": 1, \"entries\": [{\"architecture\": \"haswell\", \"kernel\": "
             "\"decode\", \"params\": {\"schedule\": \"lanes\"}, \"colour\": 1}]}");
    put_text("tuning", "version_2", "{\"format\": \"skv-tuning\", \"version\": 2, \"entries\": []}");

    put_text("hetero_profile", "valid",
             "skv-hetero-profile 1\nlayers 2 kv_heads 3\n0 0 pivot 0 1\n0 1 satellite 0 0.75\n0 2 anchor 2 0.5\n"
             "1 0 volatile 0 0\n1 1 anchor 1 0.875\n1 2 pivot 2 1\nend\n");
    put_text("hetero_profile", "one_head", "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1\nend\n");
    put_text("hetero_profile", "bad_pivot",
             "skv-hetero-profile 1\nlayers 1 kv_heads 2\n0 0 anchor 0 1\n0 1 satellite 0 1\nend\n");
    put_text("hetero_profile", "no_end", "skv-hetero-profile 1\nlayers 1 kv_heads 1\n0 0 anchor 0 1\n");
    put_text("hetero_profile", "version_2", "skv-hetero-profile 2\nlayers 1 kv_heads 1\n0 0 anchor 0 1\nend\n");

    const char *key = "0123456789abcdef0123456789abcdef";
    diskcache_seed("valid", key, "a program binary, or what stands for one", 0);
    diskcache_seed("bad_hash", key, "a program binary, or what stands for one", 1);
    diskcache_seed("other_key", "fedcba9876543210fedcba9876543210", "payload", 0);
    return 0;
}
