/* Internal declarations shared across src/ and host/ (never installed). src/ stays free
 * of OpenCL headers; host/ owns every cl_* object. */
#ifndef SKV_INTERNAL_H
#define SKV_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "skv/skv.h"

#define SKVI_ERROR_MAX 4096

#if defined(__GNUC__)
#define SKVI_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define SKVI_PRINTF(fmt_idx, arg_idx)
#endif

/* Records `fmt` as the calling thread's last error and, when ctx_error is not NULL, as
 * the context's (a SKVI_ERROR_MAX buffer). Returns status, so call sites read
 *   return skvi_fail(ctx->error, SKV_ERR_INVALID_ARG, "skv_x: ...", ...); */
skv_status skvi_fail(char *ctx_error, skv_status status, const char *fmt, ...) SKVI_PRINTF(3, 4);
skv_status skvi_vfail(char *ctx_error, skv_status status, const char *fmt, va_list ap);
/* Clears the calling thread's last error (called on entry by public functions that
 * can fail, so skv_last_error never reports a stale message after success). */
void skvi_clear_error(void);

/* Host allocation through the context's hook (a NULL allocator means malloc/free). */
void *skvi_alloc(const skv_allocator *a, size_t size);
void *skvi_calloc(const skv_allocator *a, size_t count, size_t size);
void skvi_free(const skv_allocator *a, void *ptr);
char *skvi_strdup(const skv_allocator *a, const char *s);
/* Room for `need` elements of `size` bytes in *array (`used` of them live, *cap its
 * capacity): doubling from `first`, the new tail zeroed. 0, or -1 out of memory with
 * *array and *cap unchanged. */
int skvi_array_reserve(const skv_allocator *a, void **array, size_t *cap, size_t used, size_t need, size_t size,
                       size_t first);

/* a * b into *out; 0 on overflow. */
int skvi_mul_ok(size_t a, size_t b, size_t *out);

/* 128-bit content hash (XXH3) as 32 lowercase hex digits, and a 64-bit one. */
void skvi_hash128_hex(const void *data, size_t len, char out[33]);
uint64_t skvi_hash64(const void *data, size_t len);

/* On-disk cache of opaque blobs by key (program binaries). Entries carry a magic, a
 * format version, their key and a checksum; a truncated or corrupt entry reads as
 * missing. Writes go to a temporary file in the same folder and are renamed into
 * place, so a concurrent reader sees either nothing or a whole entry. */
typedef enum skvi_cache_result {
    SKVI_CACHE_HIT = 0,
    SKVI_CACHE_MISS = 1,    /* no entry */
    SKVI_CACHE_CORRUPT = 2, /* an entry existed but failed validation (it is removed) */
    SKVI_CACHE_ERROR = 3    /* out of memory */
} skvi_cache_result;

/* Resolves the cache folder: explicit, else $SKV_CACHE_DIR, $XDG_CACHE_HOME/skv,
 * $HOME/.cache/skv. Returns NULL (cache off) when none can be formed or on OOM. */
char *skvi_cache_dir_resolve(const skv_allocator *a, const char *explicit_dir);
skvi_cache_result skvi_cache_read(const skv_allocator *a, const char *dir, const char *key_hex,
                                  unsigned char **data, size_t *size);
/* The same validation over an entry's bytes in memory (the fuzz harness): 1 and where the
 * payload lies in `bytes` when they are a whole, intact entry for key_hex, else 0. */
int skvi_cache_entry_parse(const unsigned char *bytes, size_t size, const char *key_hex,
                           const unsigned char **payload, size_t *payload_size);
/* 0 on success; on failure nothing is left behind. Creates `dir` (and parents). */
int skvi_cache_write(const skv_allocator *a, const char *dir, const char *key_hex,
                     const unsigned char *data, size_t size);

/* Embedded kernel sources (generated at build time from cl/). */
typedef struct skvi_kernel_source {
    const char *name;   /* file name in cl/, e.g. "stream_read.cl" */
    const char *text;   /* NUL-terminated source */
    size_t length;      /* strlen(text) */
    const char *sha256; /* content hash, 64 hex digits */
} skvi_kernel_source;

extern const skvi_kernel_source skvi_kernel_sources[];
extern const size_t skvi_kernel_source_count;
const skvi_kernel_source *skvi_kernel_source_find(const char *name);

/* A row of the tier table (src/tiers.c). */
typedef struct skvi_tier_desc {
    const char *name;
    int dense_keys;        /* 1: fp16 keys; 0: ADA codes */
    unsigned radius_bits;  /* ADA: bits per group for the radius code */
    unsigned angle_bits;   /* ADA: bits per group for the angle code */
    unsigned group;        /* ADA: coordinates per group (2 = pairs) */
    unsigned value_bits;   /* 16 = fp16 values; 8/4/2 = quantised */
    unsigned value_group;  /* values per quantisation group (fp16 scale + min); 0 = none */
} skvi_tier_desc;

extern const skvi_tier_desc skvi_tiers[SKV_TIER_COUNT];
/* Bytes of keys and values per token and kv-head. */
/* Budgets per layer fitted to what each layer holds (held[l], in the same units): a
 * budget above its layer's holding is cut to it and the excess goes to the layers with
 * room, in proportion to their room; what no layer can hold is dropped (PyramidKV's
 * first layers on a short sequence). */
void skvi_budget_fit(uint64_t *per_layer, const uint64_t *held, uint32_t layers);

uint64_t skvi_tier_token_bytes(skv_tier tier, uint32_t head_dim);
/* Bytes of one page: page_tokens slots of keys, values and positions. */
uint64_t skvi_tier_page_bytes(skv_tier tier, uint32_t head_dim, uint32_t page_tokens);

#endif /* SKV_INTERNAL_H */
