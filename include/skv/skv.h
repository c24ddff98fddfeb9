/* skv — compressed, paged KV cache with decode attention on OpenCL devices.
 *
 * The public C API. Conventions, used everywhere:
 *  - Every function returns skv_status; results come back through out-parameters.
 *  - Objects are opaque handles with create/destroy pairs; destroy accepts NULL.
 *  - Descriptor structs start with `struct_size`; fill them with the matching
 *    *_init() function, then change the fields you need. This keeps the ABI stable
 *    when fields are added at the end.
 *  - On error, a message saying what was wrong is kept per context
 *    (skv_context_last_error) and per calling thread (skv_last_error).
 *  - The library never prints, aborts or exits.
 *  - Threads: a context and everything created from it (caches, sequences) is used by
 *    one thread at a time; it may move between threads when the caller orders the
 *    handoff (a mutex, a join). Different contexts may be used from different threads
 *    at once, and share the program cache folder safely (files are written whole and
 *    renamed into place). The functions that take no context (skv_devices_list,
 *    skv_device_select, skv_version*, skv_status_str) may be called from any thread,
 *    and the skv_hetero_profile_* functions on different profiles. skv serialises the
 *    process's first OpenCL calls (some drivers crash when two threads make them at
 *    once). tests/test_threads.c checks this, under ThreadSanitizer in the test command.
 *  - A sequence leaves a cache as bytes and enters another (another context, process or
 *    node) with skv_seq_export / skv_seq_import (docs/export.md).
 *
 * OpenCL interop (taking the caller's cl_context / queue, events) is in <skv/skv_cl.h>,
 * so this header needs no OpenCL headers. */
#ifndef SKV_H
#define SKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(SKV_SHARED_BUILD)
#define SKV_API __declspec(dllexport)
#elif defined(__GNUC__)
#define SKV_API __attribute__((visibility("default")))
#else
#define SKV_API
#endif

/* ---- version ------------------------------------------------------------------ */
/* SKV_VERSION_MAJOR, _MINOR, _PATCH and SKV_VERSION_NUMBER (MAJOR * 10000 + MINOR * 100 +
 * PATCH), generated from the project's version at configure time. */
#include "skv/skv_version.h"

/* SKV_VERSION_NUMBER of the library actually linked; compare with the header's. */
SKV_API unsigned skv_version(void);
/* "MAJOR.MINOR.PATCH" of the linked library. */
SKV_API const char *skv_version_string(void);

/* ---- status ------------------------------------------------------------------- */
/* Values are stable: they never change meaning between versions. */
typedef enum skv_status {
    SKV_OK = 0,
    SKV_ERR_INVALID_ARG = 1,          /* NULL, out-of-range or inconsistent argument */
    SKV_ERR_OUT_OF_MEMORY = 2,        /* host allocation failed, or a pool budget is exhausted */
    SKV_ERR_DEVICE_OUT_OF_MEMORY = 3, /* the OpenCL device could not allocate */
    SKV_ERR_NO_DEVICE = 4,            /* no OpenCL device, or none matches the selector */
    SKV_ERR_OPENCL = 5,               /* an OpenCL call failed (the message names it) */
    SKV_ERR_BUILD = 6,                /* a kernel failed to build (the message has the log) */
    SKV_ERR_UNSUPPORTED = 7,          /* valid request the device or build cannot serve */
    SKV_ERR_IO = 8,                   /* a file could not be read or written */
    SKV_ERR_INTERNAL = 9              /* a broken invariant inside skv: please report */
} skv_status;

/* A short constant English description of a status ("invalid argument", ...). */
SKV_API const char *skv_status_str(skv_status status);

/* The message of the last error raised on the calling thread ("" if none). The
 * pointer stays valid until the next skv call on this thread. */
SKV_API const char *skv_last_error(void);

/* ---- allocator hook ------------------------------------------------------------ */
/* Host memory skv allocates for a context goes through this hook. alloc returns memory
 * aligned as malloc's, or NULL on failure (skv then fails with SKV_ERR_OUT_OF_MEMORY
 * and releases what it took). free accepts any pointer alloc returned. */
typedef struct skv_allocator {
    void *(*alloc)(void *user, size_t size);
    void (*free)(void *user, void *ptr);
    void *user;
} skv_allocator;

/* ---- devices -------------------------------------------------------------------- */
typedef enum skv_vendor_class {
    SKV_VENDOR_OTHER = 0,
    SKV_VENDOR_NVIDIA = 1,
    SKV_VENDOR_AMD = 2,
    SKV_VENDOR_INTEL = 3,
    SKV_VENDOR_QUALCOMM = 4,
    SKV_VENDOR_ARM = 5,
    SKV_VENDOR_APPLE = 6,
    SKV_VENDOR_CPU = 7 /* any CPU device (PoCL, Intel CPU runtime, ...) */
} skv_vendor_class;

typedef enum skv_subgroups {
    SKV_SUBGROUPS_NONE = 0,
    SKV_SUBGROUPS_KHR = 1,   /* cl_khr_subgroups */
    SKV_SUBGROUPS_INTEL = 2, /* cl_intel_subgroups (shuffles) */
    SKV_SUBGROUPS_NV_PTX = 3 /* NVIDIA: warp shuffles through inline PTX */
} skv_subgroups;

#define SKV_NAME_MAX 256

/* What skv knows about one OpenCL device; kernels are specialised from it. */
typedef struct skv_device_profile {
    unsigned platform_index; /* position in clGetPlatformIDs order */
    unsigned device_index;   /* position within the platform */
    char platform[SKV_NAME_MAX];
    char platform_version[SKV_NAME_MAX];
    char name[SKV_NAME_MAX];
    char vendor[SKV_NAME_MAX];
    char driver_version[SKV_NAME_MAX];
    skv_vendor_class vendor_class;
    int is_gpu;              /* CL_DEVICE_TYPE_GPU */
    int opencl_c_major;      /* from CL_DEVICE_OPENCL_C_VERSION; kernels build with */
    int opencl_c_minor;      /* the matching -cl-std */
    int fp16;                /* cl_khr_fp16: half arithmetic (storage works everywhere) */
    int fp64;                /* cl_khr_fp64 */
    skv_subgroups subgroups;
    unsigned compute_units;
    uint64_t local_mem_bytes;
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    size_t max_work_group_size;
    size_t preferred_wg_multiple; /* warp / wavefront / SIMD width */
    unsigned native_float_width;  /* CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT */
    /* The device's architecture, the tuning database's second key: PoCL's LLVM CPU
     * ("haswell", "skylake-avx512", from its HSTR), NVIDIA's "sm_XY", else the device name. */
    char architecture[SKV_NAME_MAX];
    /* CPU devices: floats per vector of the instruction set the kernels are compiled for
     * (16 AVX-512, 8 AVX2, 4 SSE/NEON): the smaller of the native width and what the
     * architecture's name implies (PoCL reports its host's width even when told to
     * compile for another CPU). 0 on GPUs. */
    unsigned cpu_vector_floats;
} skv_device_profile;

/* Every OpenCL device on the machine. Writes min(count, capacity) profiles to `out`
 * (which may be NULL when capacity is 0) and the total in *count. No OpenCL platform at
 * all is not an error: *count is 0. */
SKV_API skv_status skv_devices_list(skv_device_profile *out, size_t capacity, size_t *count);

/* The device a selector picks:
 *   NULL or ""  -> the SKV_DEVICE environment variable if set, else the default
 *   "default"   -> the first GPU, else the first CPU device, else the first device
 *   "cpu", "gpu"                      -> the first device of that type
 *   "nvidia", "amd", "intel", ...     -> the first device of that vendor class
 *   "P:D"                             -> platform P, device D (indices as listed)
 * A selector matching nothing gives SKV_ERR_NO_DEVICE with a message listing devices. */
SKV_API skv_status skv_device_select(const char *selector, skv_device_profile *out);

SKV_API const char *skv_vendor_class_str(skv_vendor_class v);
SKV_API const char *skv_subgroups_str(skv_subgroups s);

/* ---- context ---------------------------------------------------------------------- */
typedef struct skv_context skv_context;

typedef struct skv_context_desc {
    size_t struct_size;               /* sizeof(skv_context_desc): set by skv_context_desc_init */
    const char *device;               /* selector, see skv_device_select; NULL = default rules */
    const skv_allocator *allocator;   /* NULL = malloc/free; copied, must outlive the context */
    const char *program_cache_dir;    /* NULL = $SKV_CACHE_DIR, $XDG_CACHE_HOME/skv, ~/.cache/skv */
    int disable_program_cache;        /* 1 = never read or write cached binaries
                                       * ($SKV_NO_CACHE=1 does the same) */
    int enable_profiling;             /* 1 = queues created with profiling (benchmarks) */
    /* Tools: a build-list context (skv_context_build_list) when set to "nvidia", "amd" or
     * "intel" (it presents a typical GPU of that vendor: limits, OpenCL C version, build
     * options) or "device" (the selected device as it is). It runs on the selected device
     * but compiles nothing: every program a cache would build is recorded, and kernels
     * are argument-less stand-ins, so nothing may be decoded or appended. The built-in
     * tuning entries apply (no database file). NULL = a normal context. */
    const char *build_list;
} skv_context_desc;

/* Fills defaults: the selector rules, malloc, the default cache location. */
SKV_API void skv_context_desc_init(skv_context_desc *desc);

/* Creates a context on the selected device with its own compute and transfer queues.
 * desc may be NULL (all defaults). */
SKV_API skv_status skv_context_create(const skv_context_desc *desc, skv_context **out);
SKV_API void skv_context_destroy(skv_context *ctx);

/* The message of the last error raised on this context ("" if none). */
SKV_API const char *skv_context_last_error(const skv_context *ctx);

SKV_API skv_status skv_context_device(const skv_context *ctx, skv_device_profile *out);

/* Builds (or loads from the program cache) every kernel program now, instead of on
 * first use. A runtime calls it at start-up to keep compile time out of the first
 * decode step. */
SKV_API skv_status skv_context_prepare(skv_context *ctx);

typedef struct skv_context_stats {
    size_t struct_size;
    uint64_t programs_built;      /* compiled from source */
    uint64_t programs_from_cache; /* loaded from an on-disk binary */
    uint64_t cache_rejected;      /* cache entries found corrupt, stale or unloadable */
    uint64_t cache_written;       /* binaries written to the cache */
    uint64_t cache_write_failed;  /* writes that failed (the build itself still succeeded) */
} skv_context_stats;

/* Set out->struct_size = sizeof(skv_context_stats) before the call. */
SKV_API skv_status skv_context_get_stats(const skv_context *ctx, skv_context_stats *out);

/* One program of a build-list context (skv_context_desc.build_list): exactly what the
 * host would pass to clCreateProgramWithSource and clBuildProgram on that device, for
 * offline compilers and simulators (skv kernels). The strings live until the context is
 * destroyed. */
typedef struct skv_program_record {
    size_t struct_size;  /* sizeof(skv_program_record): set by the caller */
    const char *name;    /* embedded sources joined by '+', e.g. "decode.h+decode_ada.h+decode_gpu.cl" */
    const char *options; /* the build options, -cl-std and defines included */
    const char *kernels; /* the kernels the host creates from it, space-separated ("" if none) */
    const char *source;  /* the program text: the prelude and its parts, each after a #line */
} skv_program_record;

/* The programs recorded so far, in the order first asked for (caches created on the
 * context add theirs; skv_context_prepare adds the context's own). *count is 0 on a
 * normal context. */
SKV_API skv_status skv_context_build_list(const skv_context *ctx, size_t *count);
SKV_API skv_status skv_context_build_record(const skv_context *ctx, size_t i, skv_program_record *out);

/* The device's streaming-read bandwidth in GB/s (1e9 bytes/s): the median of `runs`
 * timed passes of a read kernel over `bytes` (capped at the device's max allocation),
 * after one warm-up pass. The ceiling decode attention is measured against. */
SKV_API skv_status skv_measure_read_bandwidth(skv_context *ctx, uint64_t bytes, unsigned runs,
                                              double *gbps);


/* ---- cache ---------------------------------------------------------------------------- */
/* A model's KV cache on one context: pages of `page_tokens` token slots, each page
 * holding one (sequence, layer, kv-head, tier), in pools in device memory and in pinned
 * host memory. */
typedef struct skv_cache skv_cache;
typedef uint32_t skv_seq_id;

typedef enum skv_dtype {
    SKV_F32 = 0,
    SKV_F16 = 1,
    SKV_BF16 = 2
} skv_dtype;

/* Storage tiers (DESIGN.md §4). The tier table is data (src/tiers.c); F16 is the dense
 * tier every cache has. */
typedef enum skv_tier {
    SKV_TIER_F16 = 0,
    SKV_TIER_A4V8 = 1,
    SKV_TIER_A3V4 = 2,
    SKV_TIER_A2V2 = 3,
    SKV_TIER_COUNT = 4
} skv_tier;

typedef enum skv_memory {
    SKV_MEM_DEVICE = 0,
    SKV_MEM_HOST = 1,
    SKV_MEM_COUNT = 2
} skv_memory;

typedef enum skv_budget_rule {
    SKV_BUDGET_UNIFORM = 0, /* every layer and head the mean */
    SKV_BUDGET_PYRAMID = 1, /* PyramidKV: layers linear from 2B - B/20 (first) to B/20 (last) */
    SKV_BUDGET_ADAKV = 2    /* AdaKV: uniform across layers, per head by skv_budget_adakv */
} skv_budget_rule;

typedef enum skv_retention {
    SKV_RETENTION_NONE = 0, /* keep every token at F16 */
    SKV_RETENTION_RDR = 1   /* Rate-Distortion Retention under desc.budget_ratio */
} skv_retention;

/* Retention scorers (DESIGN.md §7): per (token, kv-head), higher = keep. The means of
 * keydiff and manifold run over every key appended to the sequence, evicted ones too:
 * they describe the whole context, as kvpress's one compression of a prefill sees it, and
 * need no key back when one is dropped. */
typedef enum skv_scorer {
    SKV_SCORER_NONE = 0,
    SKV_SCORER_KNORM = 1,             /* -|k| */
    SKV_SCORER_KEYDIFF = 2,           /* -cos(k, a), a = mean of k/|k| over the sequence */
    SKV_SCORER_MANIFOLD = 3,          /* |k - mu|, mu = mean key of the sequence */
    SKV_SCORER_MANIFOLD_WINDOWED = 4, /* |k - mu_w|, mu_w = mean key of k's position window */
    SKV_SCORER_STREAMING = 5,         /* +inf for the first n_sink positions, else the position */
    SKV_SCORER_TRIATTENTION = 6,      /* TriAttention: needs desc.rope and the query statistics */
    SKV_SCORER_SNAPKV = 7,            /* SnapKV: attention of an observation window of queries */
    SKV_SCORER_OBSERVED = 8           /* H2O: attention accumulated by decode / the steps that observed it */
} skv_scorer;
/* manifold_windowed keeps a mean per window that holds a token, however far apart their
 * positions. The observed scorer and HeteroCache keep state per position, so with them a
 * layer's positions may run at most 4x ahead of the tokens appended to it (or up to
 * 65535): skv_append refuses a position beyond with SKV_ERR_UNSUPPORTED. */

/* How the model applied RoPE to the keys it appends (TriAttention inverts it). */
typedef struct skv_rope_desc {
    float theta;          /* base, e.g. 10000; 0 = no RoPE described */
    uint32_t rotary_dims; /* rotated dims (TriAttention needs all: = head_dim) */
    uint32_t interleaved; /* 0: pairs (i, i + rotary_dims/2) (NeoX/Llama); 1: (2i, 2i+1) */
    float scaling;        /* linear position scaling: angles use position / scaling (1 = none) */
} skv_rope_desc;

typedef struct skv_cache_desc {
    size_t struct_size;           /* set by skv_cache_desc_init */
    uint32_t layers;              /* >= 1 */
    uint32_t q_heads;             /* a multiple of kv_heads (GQA) */
    uint32_t kv_heads;            /* >= 1 */
    uint32_t head_dim;            /* 64, 128 or 256 */
    uint32_t page_tokens;         /* power of two in 16..256; default 64 */
    uint64_t device_budget_bytes; /* cap on device page memory; 0 = half the device memory */
    uint64_t host_budget_bytes;   /* cap on pinned host page memory; 0 = no host tier */
    uint32_t tiers;               /* bit mask of (1u << skv_tier); must include F16 */
    skv_retention retention;
    skv_scorer scorer;            /* what skv_seq_scores computes; NONE = no key statistics kept */
    uint32_t score_window;        /* manifold_windowed: positions per window (default 4096) */
    uint32_t n_sink;              /* streaming: protected first positions (default 4) */
    skv_rope_desc rope;           /* the model's RoPE (TriAttention) */
    /* TriAttention's query statistics (from calibration), copied at creation: the mean
     * pre-RoPE query [layers][q_heads][head_dim] in the RoPE layout above, and E|q_f|, the
     * mean magnitude of each rotary pair, [layers][q_heads][head_dim / 2] */
    const float *query_mean;
    const float *query_abs;
    /* RDR (retention = SKV_RETENTION_RDR; needs a scorer): every (layer, kv-head) keeps
     * its tokens within budget_ratio of the F16 bytes of every token appended to it (page
     * rounding included), choosing per token F16, one of `tiers` or drop; the first
     * n_sink positions and the last recent_window positions (from the newest appended
     * position back: with gaps in the positions, fewer tokens) stay F16 (a floor under
     * any budget).
     * It runs on append once `slack` tokens have been appended since the last
     * compression (an skv_append_cl starts it after slack / 2, deferred: it runs in a
     * later call on the cache once that append completed, or at slack in the append
     * itself, after a wait), and on skv_compress. The budget is a ceiling: each
     * compression leaves room for the F16 pages the next slack tokens may open, so
     * between calls a (layer, kv-head) never holds more than budget_ratio of the F16
     * bytes of the tokens appended to it (or its share of budget_bytes) — except while
     * the floor above (the sinks' page, the recent window and that room) is larger,
     * i.e. on short sequences: below about (2 page_tokens + recent_window + slack) /
     * budget_ratio tokens. slack >= 65536 turns compression on append off in effect;
     * then no room is reserved and the budget holds at each skv_compress only.
     * It does not run on a layer with pages in host memory (skv_seq_offload): such a
     * layer keeps every token appended, beyond the budget, until its pages are fetched;
     * the next append then compresses it. */
    float budget_ratio;           /* in (0, 1]; default 1 */
    uint32_t recent_window;       /* default 128 */
    uint32_t slack;               /* default 64 */
    skv_budget_rule budget_rule;  /* how the budget spreads over layers (uniform, pyramid) */
    /* RDR: an absolute cap on one sequence's page bytes, all layers and kv-heads together
     * (0 = none); with budget_ratio, the smaller budget applies. It is split like the
     * ratio's (budget_rule), in whole F16 token equivalents per (layer, kv-head). */
    uint64_t budget_bytes;
    /* RDR with a key-statistics scorer (knorm .. streaming) keeps each held token's score
     * and scores only the tokens new since the last compression; every score_refresh-th
     * compression of a sequence scores every token again, against the statistics of the
     * moment (default 8; 1 = always every token). Between refreshes an older token's
     * score is the one its statistics gave when it was scored. */
    uint32_t score_refresh;
    /* ADA's random rotation: the Hadamard signs of every (layer, kv-head) are drawn from
     * this seed (default 0, the built-in draw). One draw decides a lot on real keys
     * (README: RDR), so quality comparisons average over several seeds (skv eval
     * --seeds). Pages carry no seed: caches that exchange pages must share it. */
    uint64_t rotation_seed;
} skv_cache_desc;

/* Zero geometry (the caller sets layers, heads, head_dim), page_tokens 64, tiers F16,
 * default budgets, no retention. */
SKV_API void skv_cache_desc_init(skv_cache_desc *desc);
/* Invalid geometry or budgets give SKV_ERR_INVALID_ARG with a message naming the field. */
SKV_API skv_status skv_cache_create(skv_context *ctx, const skv_cache_desc *desc, skv_cache **out);
/* Waits for the cache's pending work, then frees every page and the cache. */
SKV_API void skv_cache_destroy(skv_cache *cache);

/* Bytes one page of `tier` occupies (keys, values and the per-slot positions). */
SKV_API skv_status skv_cache_page_bytes(const skv_cache *cache, skv_tier tier, uint64_t *bytes);

/* Sequences. Ids are small integers reused after skv_seq_free. */
SKV_API skv_status skv_seq_create(skv_cache *cache, skv_seq_id *out);
/* Frees the sequence and releases its references on pages. */
SKV_API skv_status skv_seq_free(skv_cache *cache, skv_seq_id seq);
/* A new sequence sharing every page of `parent` (copy-on-write: a shared page that is
 * only partly filled is copied before either sequence appends into it). */
SKV_API skv_status skv_seq_fork(skv_cache *cache, skv_seq_id parent, skv_seq_id *child);
/* Tokens held for `layer`. */
SKV_API skv_status skv_seq_length(const skv_cache *cache, skv_seq_id seq, uint32_t layer, uint64_t *tokens);
/* The original positions of the tokens of (layer, kv_head), in cache order. Writes
 * min(capacity, length) values and the length in *count. Waits for pending work. */
SKV_API skv_status skv_seq_positions(skv_cache *cache, skv_seq_id seq, uint32_t layer,
                                     uint32_t kv_head, int32_t *out, size_t capacity, size_t *count);

/* Appends n_tokens tokens of one layer. k and v are [n_tokens][kv_heads][head_dim] in
 * `dtype`; positions[n_tokens] are the tokens' positions. All or nothing: on any error
 * (SKV_ERR_OUT_OF_MEMORY when the budget has no room) the sequence is unchanged. The
 * host arrays may be reused as soon as the call returns.
 * Positions need no order: they are stored as given (negative, repeated or decreasing
 * ones too) and decode never reads them; they matter to what ranks tokens by position:
 * RDR's sink and recent-window protection (positions below n_sink, or within
 * recent_window of the largest), the streaming scorer, manifold_windowed's windows
 * (a negative position is in window 0), the observed scorer (a negative position
 * accumulates nothing) and TriAttention (the RoPE phase). Host keys and values holding
 * NaN or Inf are refused (SKV_ERR_INVALID_ARG): one would turn every decode of its head
 * into NaN. skv_append_cl cannot check the caller's buffers without a wait and does not. */
SKV_API skv_status skv_append(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t n_tokens,
                              skv_dtype dtype, const void *k, const void *v, const int32_t *positions);

/* Moves the full pages of tokens [token_begin, token_end) of every layer and kv-head to
 * host memory (offload) or back to device memory (fetch), asynchronously on the
 * transfer queue. Pages only partly inside the range, and the page being appended to,
 * stay where they are. Later skv work waits for the moves through events; the host
 * never blocks. Decode attention attends over the pages on the device: tokens in host
 * memory are left out (a kv-head with no token on the device is an error);
 * skv_attention_logits needs every page on the device. */
SKV_API skv_status skv_seq_offload(skv_cache *cache, skv_seq_id seq, uint64_t token_begin, uint64_t token_end);
SKV_API skv_status skv_seq_fetch(skv_cache *cache, skv_seq_id seq, uint64_t token_begin, uint64_t token_end);
/* Re-encodes the full F16 pages of tokens [token_begin, token_end) of every layer and
 * kv-head (counted in each list's own token order) into ADA `tier` (one of the cache's
 * tiers): keys as angle codes, values quantised (DESIGN.md §4-5). The F16 pages are
 * freed; the recent partly filled page stays F16. All or nothing, like append. RDR
 * (retention) decides this per token and head; this call is the explicit form. */
SKV_API skv_status skv_seq_quantize(skv_cache *cache, skv_seq_id seq, uint64_t token_begin, uint64_t token_end,
                                    skv_tier tier);

/* Export and import of one sequence (docs/export.md): KV transfer between a prefill
 * node and a decode node, or to disk. The export is a versioned, checksummed byte
 * format holding every page of every tier as stored (F16 and ADA codes, positions),
 * where each page lives (device or host tier: host pages are read from host memory and
 * imported into the host tier), the per-layer lengths, the geometry, the ADA rotation
 * seed and codebook identity, and the scorer state a later compression reads (key
 * statistics and their pending tokens, SnapKV windows, observed attention, RDR's kept
 * scores and counters), so that decode, and a later skv_compress, on the import equal
 * the original's bit for bit. The query statistics RDR learns from decode calls are the
 * cache's, not the sequence's, and are not exported. A HeteroCache sequence, or one
 * calibrating, gives SKV_ERR_UNSUPPORTED. A compression deferred by skv_append_cl and
 * not yet run is not part of the export (skv_compress first to include it).
 *
 * export: buf NULL gives the size in *size; else the export is written to buf[cap]
 * (SKV_ERR_INVALID_ARG, with the size in *size, when cap is short). Waits for the
 * cache's pending work. Changes nothing in the cache.
 * import: a new sequence in *out. SKV_ERR_INVALID_ARG for a buffer that is truncated,
 * corrupt (checksum) or malformed; SKV_ERR_UNSUPPORTED for a well-formed export the
 * cache cannot honour (another format version, geometry, page size, tiers, rotation
 * seed or codebook, a scorer whose state it lacks, host pages without a host tier);
 * SKV_ERR_OUT_OF_MEMORY when the budgets have no room. All or nothing: on any error the
 * cache is unchanged. Waits for the cache's pending work and for its own page writes:
 * buf may be freed as soon as the call returns. The buffer needs no alignment. */
SKV_API skv_status skv_seq_export(skv_cache *cache, skv_seq_id seq, void *buf, size_t cap, size_t *size);
SKV_API skv_status skv_seq_import(skv_cache *cache, const void *buf, size_t size, skv_seq_id *out);

/* Pages of the sequence (all layers and heads) currently in host memory. */
SKV_API skv_status skv_seq_host_pages(const skv_cache *cache, skv_seq_id seq, uint64_t *pages);

/* Decode attention for one layer: for each of the n_seqs sequences, one query
 * q[n_seqs][q_heads][head_dim] (SKV_F32 or SKV_F16) attends over every token the
 * sequence holds for `layer`; out[n_seqs][q_heads][head_dim] (SKV_F32 or SKV_F16)
 * receives softmax(scale * q.K^T) V. Q head i reads kv head i / (q_heads / kv_heads).
 * Blocks until `out` is written; see skv_attention_decode_cl for the asynchronous form.
 * A sequence may appear more than once in a batch. A query holding NaN or Inf is refused
 * (SKV_ERR_INVALID_ARG, naming the sequence and q-head); skv_attention_decode_cl does
 * not read the caller's buffer, and such a query gives NaN or zeros in its head's output.
 * A failed call leaves the cache as it was: the observed scorer counts a step only once
 * everything else in the call succeeded. */
SKV_API skv_status skv_attention_decode(skv_cache *cache, uint32_t layer, const skv_seq_id *seqs,
                                        uint32_t n_seqs, skv_dtype q_dtype, const void *q, float scale,
                                        skv_dtype out_dtype, void *out);

/* The logits decode attention computes for one query q[q_heads][head_dim] of one
 * sequence, by the same kernels from the stored keys (F16, or the ADA codes: the logit
 * from codes, times the tier's logit correction): out[qh * capacity + i] = scale * q_qh . k_i
 * for the i-th token held by q-head qh's kv-head, in cache order (as skv_seq_positions);
 * counts[kv_heads] receives the tokens each kv-head holds. capacity must be at least the
 * most any kv-head holds (the sequence's length always is), else SKV_ERR_INVALID_ARG.
 * For evaluation and diagnostics (skv eval's logit error); it changes nothing in the
 * cache (an observed-attention cache accumulates nothing from it). Waits for the result. */
SKV_API skv_status skv_attention_logits(skv_cache *cache, uint32_t layer, skv_seq_id seq, skv_dtype q_dtype,
                                        const void *q, float scale, float *out, size_t capacity, size_t *counts);

/* Device time of the last decode-attention call on this cache (both of its kernels),
 * in milliseconds, from OpenCL profiling events; waits for that call to finish.
 * SKV_ERR_UNSUPPORTED unless the context was created with enable_profiling (or on a
 * caller's queue with profiling), SKV_ERR_INVALID_ARG before the first call. */
SKV_API skv_status skv_cache_last_decode_ms(skv_cache *cache, double *ms);

/* SnapKV's observation window for `layer`: the last n_queries queries of the prefill,
 * q[n_queries][q_heads][head_dim] (post-RoPE, as decode takes them) at `positions`.
 * Replaces the layer's previous window; kept (host memory) until the sequence is freed.
 * With RDR (any scorer) the queries also teach RDR's distortion model the layer's query
 * energy, as decode calls with host queries do (README: RDR): a runtime that prefills
 * outside skv passes its last prefill queries here before the first compression.
 * Scores: softmax(q K^T / sqrt(d)) of each window query over the keys at or before its
 * position (a CLBlast GEMM), the mean over the window and the GQA group, average-pooled
 * over 5 neighbours among the held keys before the window, in position order (kvpress);
 * keys inside the window score +inf. */
SKV_API skv_status skv_seq_observe_window(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t n_queries,
                                          skv_dtype dtype, const void *q, const int32_t *positions);

/* TriAttention: scores are z-scored per q-head over the tokens (layer, kv_head) holds,
 * then the maximum over the kv-head's GQA group is taken; t0 is the sequence's last
 * appended position + 1. */
/* Scores of the tokens (layer, kv_head) holds, in cache order (as skv_seq_positions),
 * by the cache's scorer. Key statistics (means per sequence, per window) are running sums
 * over every key appended to (layer, kv-head), updated incrementally; every held token is
 * rescored against them (F16 keys directly, ADA keys from their codes). Writes
 * min(capacity, held) scores and the held count in *count. Waits for pending work. */
SKV_API skv_status skv_seq_scores(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t kv_head, float *out,
                                  size_t capacity, size_t *count);

typedef struct skv_pool_stats {
    uint64_t page_bytes;      /* bytes per page */
    uint64_t pages_used;      /* pages referenced by some sequence */
    uint64_t pages_allocated; /* pages the pool has memory for */
    uint64_t bytes_used;      /* pages_used * page_bytes */
    uint64_t bytes_allocated; /* memory the pool holds */
} skv_pool_stats;

typedef struct skv_cache_stats {
    size_t struct_size; /* set to sizeof(skv_cache_stats) before the call */
    skv_pool_stats pools[SKV_TIER_COUNT][SKV_MEM_COUNT];
    uint64_t device_budget_bytes;
    uint64_t host_budget_bytes;
    uint32_t sequences; /* live sequences */
    uint64_t tokens[SKV_TIER_COUNT]; /* tokens held per tier, over the live sequences */
    double bytes_ratio;              /* pages in use / the F16 pages of every token appended */
    /* decode calls, and the OpenCL objects they created: buffers and sub-buffers of the
     * decode workspace (grown geometrically, then reused: none per step after warm-up),
     * kernels built on first use, and the one event an skv_attention_decode_cl call
     * creates to fence its staged tables when the caller takes no event. Events handed
     * to the caller and those a profiling queue keeps for skv_cache_last_decode_ms are
     * not counted. */
    uint64_t decode_calls;
    uint64_t decode_cl_objects;
    /* RDR compressions that completed (skv_compress and on append), and the host waits
     * of all compressions: one for the pending key statistics of every layer; one
     * per wave of layers (up to ~4M held tokens) for their scores and positions, plus one
     * per (layer, kv-head) whose scorer waits itself (SnapKV, TriAttention, observed);
     * one per step of the solver, which runs every (layer, kv-head) together. A
     * compression an skv_append_cl makes due is deferred (no wait in that call): it runs
     * in a later append or decode call on the cache once the layer's last append has
     * completed, its waits on a queue of skv's own; deferred_compressions counts those
     * that completed (also in compressions) and deferred_pending those not yet run. */
    uint64_t compressions;
    uint64_t compress_host_waits;
    uint64_t deferred_compressions;
    uint32_t deferred_pending;
} skv_cache_stats;

SKV_API skv_status skv_cache_get_stats(const skv_cache *cache, skv_cache_stats *out);

/* ---- TriAttention's calibration --------------------------------------------------------- */
/* TriAttention's query statistics from queries a runtime has, e.g. its prompt's last ones:
 * q is [n][q_heads][head_dim] float32, each after RoPE at positions[i] (>= 0); each has its
 * RoPE inverted, then per q-head `mean` ([q_heads][head_dim]) receives the mean pre-RoPE
 * query and `abs_pair` ([q_heads][head_dim / 2]) the mean magnitude of each rotary pair
 * (pair f as rope->interleaved lays it out): one layer of skv_cache_desc.query_mean and
 * query_abs. rope must rotate every dim (rotary_dims = head_dim), theta > 1, scaling > 0;
 * a non-finite query or a negative position is SKV_ERR_INVALID_ARG. */
SKV_API skv_status skv_query_stats(const skv_rope_desc *rope, uint32_t q_heads, uint32_t head_dim, uint32_t n,
                                   const float *q, const int32_t *positions, float *mean, float *abs_pair);

/* ---- budgets across layers and heads (DESIGN.md §7) ---------------------------------- */


/* Per-layer token budgets (per kv-head) for a mean of mean_tokens; they add up to
 * exactly layers * mean_tokens. */
SKV_API skv_status skv_budget_layers(skv_budget_rule rule, uint32_t layers, uint64_t mean_tokens,
                                     uint64_t *per_layer);
/* AdaKV's per-head split of one layer's budget (layer_budget tokens over all heads):
 * every head keeps its top safeguard * layer_budget / heads tokens (AdaKV uses 0.2), the
 * rest go to the highest scores across heads (ties: lower head, then lower index).
 * scores is [heads][tokens], higher = keep. */
SKV_API skv_status skv_budget_adakv(const float *scores, uint32_t heads, uint64_t tokens, uint64_t layer_budget,
                                    float safeguard, uint64_t *per_head);

/* Runs RDR now on every layer of the sequence (DESIGN.md §7): scores, utilities, the
 * solver, packing. All or nothing: on any error the sequence is exactly as it was.
 * SKV_ERR_INVALID_ARG when pages of the sequence are in host memory. */
SKV_API skv_status skv_compress(skv_cache *cache, skv_seq_id seq);

/* ---- HeteroCache (DESIGN.md §7b) ------------------------------------------------------
 * Heads fall into four categories by the stability of their top-k attended tokens over
 * decode steps and by how much their top-k sets overlap other heads' of the layer. */
typedef enum skv_head_category {
    SKV_HEAD_PIVOT = 0,     /* the centre of a star of similar heads: watched for drift,
                             * its whole cache on the device */
    SKV_HEAD_SATELLITE = 1, /* similar to its pivot: its full KV in the host tier, and on the
                             * device a budget by stability holding the tokens its pivot
                             * attends to, changed when the pivot drifts */
    SKV_HEAD_ANCHOR = 2,    /* stable (S >= tau_stable) and alone: a budget by stability */
    SKV_HEAD_VOLATILE = 3   /* unstable and alone: its whole cache on the device */
} skv_head_category;

SKV_API const char *skv_head_category_str(skv_head_category c);

typedef struct skv_hetero_desc {
    size_t struct_size;  /* set by skv_hetero_desc_init */
    uint32_t top_k;      /* attended tokens per (layer, kv-head) and step; default 1024, capped by the
                          * layer's length */
    float tau_sim;       /* star clustering: heads with top-k overlap >= tau_sim join a pivot (0.5) */
    float tau_stable;    /* anchors: stability >= tau_stable (0.5); drift: a pivot's overlap with its
                          * reference below it triggers retrieval */
    float eps;           /* budgets of anchors and satellites in proportion to 1 / (S + eps) (0.1) */
    uint32_t max_steps;  /* calibration: decode steps recorded per layer (default 64; later ones are
                          * counted and ignored) */
    uint32_t check_steps; /* drift: the pivots are checked every check_steps decode steps (5) */
    int retrieval;        /* 1 (default): re-rank satellites' resident tokens when their pivot
                           * drifts, copying new ones from the host tier; 0: never */
} skv_hetero_desc;

SKV_API void skv_hetero_desc_init(skv_hetero_desc *desc);

/* A calibrated profile: per (layer, kv-head) a category, its pivot (a satellite's pivot,
 * else the head itself) and its stability. */
typedef struct skv_hetero_profile skv_hetero_profile;

/* Calibration. From begin, every decode step that includes `seq` computes on the device,
 * per (layer, kv-head), the top-k tokens by the attention probability of the step
 * (averaged over the GQA group; the decode kernels' kept logits), and keeps the sets on
 * the device: no host round trip per step. Feed the prefill's last queries through
 * skv_attention_decode as steps too, if wanted. end reads the sets back once and builds
 * the profile: the first step of each layer is the reference K_ref; stability S =
 * median over steps of |K_t ∩ K_ref| / k; the similarity of two heads of a layer is the
 * mean over steps of their top-k overlap / k; greedy star clustering (DESIGN.md §7b).
 * end needs at least one step per layer (SKV_ERR_INVALID_ARG otherwise, and the
 * calibration stays open); abort drops it. One calibration per sequence at a time. */
SKV_API skv_status skv_hetero_calibrate_begin(skv_cache *cache, skv_seq_id seq, const skv_hetero_desc *desc);
SKV_API skv_status skv_hetero_calibrate_end(skv_cache *cache, skv_seq_id seq, skv_hetero_profile **out);
SKV_API skv_status skv_hetero_calibrate_abort(skv_cache *cache, skv_seq_id seq);

/* A profile from the caller's arrays [layers][kv_heads] (stability may be NULL: 1 for
 * anchors, pivots and satellites, 0 for volatile heads). A satellite's pivot must be a pivot
 * of the same layer, every other head its own pivot. */
SKV_API skv_status skv_hetero_profile_create(uint32_t layers, uint32_t kv_heads, const skv_head_category *category,
                                             const uint32_t *pivot, const float *stability,
                                             skv_hetero_profile **out);
SKV_API void skv_hetero_profile_free(skv_hetero_profile *profile);
SKV_API skv_status skv_hetero_profile_head(const skv_hetero_profile *profile, uint32_t layer, uint32_t kv_head,
                                           skv_head_category *category, uint32_t *pivot, float *stability);
SKV_API skv_status skv_hetero_profile_shape(const skv_hetero_profile *profile, uint32_t *layers, uint32_t *kv_heads);
/* A small versioned text file ("skv-hetero-profile 1", the shape, one line per head).
 * load rejects a malformed file, another version, or one whose shape is not
 * layers x kv_heads (0, 0: any), with SKV_ERR_INVALID_ARG and a message; *out is then
 * untouched. */
SKV_API skv_status skv_hetero_profile_save(const skv_hetero_profile *profile, const char *path);
SKV_API skv_status skv_hetero_profile_load(const char *path, uint32_t layers, uint32_t kv_heads,
                                           skv_hetero_profile **out);

/* Runs HeteroCache on an empty sequence of an RDR cache (retention RDR, a scorer, and,
 * when the profile has satellites, a host tier and an ADA tier in desc.tiers). At every
 * compression the layer's budget (budget_ratio, budget_rule) is split by
 * skv_ref_hetero_budgets: pivots and volatile heads keep every token at F16 on the
 * device; anchors are compressed by RDR to their share; a satellite keeps its whole KV
 * at F16 with every page in the host tier but those of its sinks, its recent window and
 * its tail, and holds on the device, token by token, copies of the tokens its pivot
 * attends to: the pivot's current top-k first, then the others by the pivot's score
 * (the cache's scorer), as many as its share leaves room for, in the most precise ADA
 * tier the cache has (its resident tokens; never a token its F16 pages on the device
 * hold, so none is read twice). Decode attends over what is on the device. Every
 * check_steps decode steps the pivots' top-k is computed on the device and read back
 * without a wait; at the sequence's next decode step of that layer it is compared with
 * the pivot's reference, and below tau_stable the reference resets and each satellite's
 * resident tokens change to the new ranking: tokens that stay keep their slots, new ones
 * are encoded from the host pages in queue order (the host does not wait). The profile
 * is copied. SKV_ERR_INVALID_ARG when the shape differs from the cache's, the sequence
 * holds tokens, or a layer's pivots and volatile heads alone exceed budget_ratio. The
 * sequence then refuses skv_seq_quantize, skv_seq_fork and the explicit offload/fetch
 * calls (HeteroCache places its pages itself). skv_seq_positions of a satellite gives
 * its F16 list (every token, host pages too) and then its resident copies. */
SKV_API skv_status skv_seq_hetero(skv_cache *cache, skv_seq_id seq, const skv_hetero_profile *profile,
                                  const skv_hetero_desc *desc);

typedef struct skv_hetero_stats {
    size_t struct_size;         /* set to sizeof(skv_hetero_stats) before the call */
    uint64_t checks;            /* drift checks of a pivot */
    uint64_t drifts;            /* checks that found the overlap below tau_stable */
    uint64_t retrievals;        /* retrievals enqueued (per drifting pivot and satellite) */
    uint64_t retrievals_failed; /* retrievals that could not be enqueued (no memory): the cache is unchanged */
    uint64_t pages_fetched;     /* pages moved host -> device */
    uint64_t tokens_fetched;    /* satellites' tokens copied from host pages into resident device pages */
    uint64_t pages_evicted;     /* device -> host: a satellite's F16 pages leaving its recent window */
    uint64_t bytes_moved;       /* both directions */
    uint64_t pages_skipped;     /* decode steps' pages skipped because their copy was still in flight
                                 * (no longer happens: retrieval runs in queue order) */
    uint64_t compute_waits;     /* compute launches that had to wait for a page move */
    uint64_t device_bytes;      /* now: the cache's page bytes in device memory */
    uint64_t host_bytes;        /* now: in host memory */
} skv_hetero_stats;

/* Counters since the cache was created, over all its sequences. */
SKV_API skv_status skv_cache_hetero_stats(const skv_cache *cache, skv_hetero_stats *out);

/* The full pages of tokens [token_begin, token_end) of one (layer, kv-head), F16 and ADA
 * lists alike (counted in each list's own token order), moved like skv_seq_offload. */
SKV_API skv_status skv_seq_offload_head(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t kv_head,
                                        uint64_t token_begin, uint64_t token_end);
SKV_API skv_status skv_seq_fetch_head(skv_cache *cache, skv_seq_id seq, uint32_t layer, uint32_t kv_head,
                                      uint64_t token_begin, uint64_t token_end);

/* ---- kernel variants and the tuning database ------------------------------------------
 * Decode runs one of two schedules, each with parameters (cl/decode.cl):
 *   GROUP  a work-group per chunk of a (sequence, kv-head), a slot per work-item, local
 *          memory reductions: GPUs;
 *   LANES  a work-item per chunk, LANES slots per vector (one lane each), no local
 *          memory and no barriers: CPUs.
 * A cache takes its parameters per tier when it is created, from (first match wins)
 * the context's override (skv_context_set_decode_params), the tuning database file
 * ($SKV_TUNING_DB, else tuning.json in the program cache directory; written by
 * `skv tune`), then the built-in entries. Within the file and the built-in table an
 * entry for this exact device and driver beats one for its architecture, which beats
 * one for its vendor class; among those, the entry naming more of the problem (tier,
 * head_dim, q-heads per kv-head) wins. A malformed file, one of another version, or one
 * over 4 MiB or 65536 entries is ignored whole (skv_tuning_info.note says why), never
 * half-trusted. A variant the device cannot build or run falls back to the built-in
 * choice, then to the most portable one (the reason goes to skv_context_last_error, the
 * call still succeeds). */
typedef enum skv_schedule {
    SKV_SCHEDULE_DEFAULT = 0, /* in an override: keep the database's schedule */
    SKV_SCHEDULE_GROUP = 1,
    SKV_SCHEDULE_LANES = 2
} skv_schedule;

typedef struct skv_decode_params {
    skv_schedule schedule;
    uint32_t lanes;         /* LANES: slots per vector, 16, 8 or 4 */
    uint32_t tile;          /* tokens per tile, a power of two in 16..1024: GROUP's
                             * work-group size; chunks hold whole tiles */
    uint32_t chunks_per_cu; /* split-K: chunks enough for this many per compute unit, 1..64 */
    uint32_t f16_slots;     /* LANES, F16 tier: slots per key pass, 1, 2, 4 or 8 (in an entry or
                             * override 0: by group, 8 below 4 q-heads per kv-head, 4 from 4,
                             * 2 from 8, 1 from 16) */
} skv_decode_params;

typedef enum skv_tuning_match {
    SKV_TUNING_DEFAULT = 0,      /* derived from what the device reports */
    SKV_TUNING_VENDOR = 1,       /* an entry for the device's vendor class */
    SKV_TUNING_ARCHITECTURE = 2, /* an entry for its architecture */
    SKV_TUNING_EXACT = 3,        /* an entry for this device and driver */
    SKV_TUNING_OVERRIDE = 4      /* skv_context_set_decode_params */
} skv_tuning_match;

typedef struct skv_tuning_info {
    size_t struct_size;      /* sizeof(skv_tuning_info): set by the caller */
    skv_decode_params decode;
    skv_tuning_match match;
    int from_file;           /* 1: the tuning database file, 0: built in (or override) */
    char source[1024];       /* "built-in", "override" or the file's path */
    char entry[SKV_NAME_MAX]; /* what matched, e.g. "cpu, 8-float vectors" or "haswell a3v4" */
    char note[SKV_NAME_MAX];  /* why the file was not used ("" when it was, or there is none) */
    skv_decode_params builtin; /* what the built-in entries alone give (no file, no override) */
} skv_tuning_info;

SKV_API const char *skv_schedule_str(skv_schedule s);
SKV_API const char *skv_tuning_match_str(skv_tuning_match m);

/* The decode parameters a cache created now would take for `tier` at this head_dim and
 * q-heads per kv-head (`group`), and where they come from. out->struct_size must be set. */
SKV_API skv_status skv_context_tuning(skv_context *ctx, skv_tier tier, uint32_t head_dim, uint32_t group,
                                      skv_tuning_info *out);
/* The tuning database file the context looked for when it was created ($SKV_TUNING_DB,
 * else tuning.json in the program cache directory): "" when it has none (no cache
 * directory). Whether the file exists and was used is skv_context_tuning's to say.
 * SKV_ERR_INVALID_ARG when the path does not fit in `size` bytes. */
SKV_API skv_status skv_context_tuning_path(const skv_context *ctx, char *buf, size_t size);
/* Overrides the decode parameters of caches created after this call (existing caches
 * keep theirs); fields left 0 keep the database's value. NULL removes the override.
 * Out-of-range values give SKV_ERR_INVALID_ARG and change nothing. */
SKV_API skv_status skv_context_set_decode_params(skv_context *ctx, const skv_decode_params *params);
/* Rebuilds a cache's decode kernels with `params` over the database's choice (fields
 * left 0 keep it; NULL: the database's choice alone), fitted to the device (a GROUP tile
 * shrinks to what the device allows) but never falling back: a variant that cannot
 * run gives its error and the cache keeps its kernels. Waits for queued work. */
SKV_API skv_status skv_cache_set_decode_params(skv_cache *cache, const skv_decode_params *params);
/* The parameters a cache's tier runs with (after any fallback). */
SKV_API skv_status skv_cache_decode_params(const skv_cache *cache, skv_tier tier, skv_decode_params *out);

/* Blocks until all work skv enqueued on this context has completed. */
SKV_API skv_status skv_context_finish(skv_context *ctx);

/* ---- key/value files ------------------------------------------------------------------
 * A model's keys, values and queries on disk, for offline evaluation (skv eval --kv) and
 * for moving a prefill's cache between tools. The format, all little-endian:
 *   nine uint32: magic 0x564B4B53 ("SKKV"), version (1 or 2), dtype (0 float32, 1 fp16),
 *     layers, kv_heads, q_heads, head_dim, tokens, n_queries;
 *   version 2 adds three: n_window, the RoPE theta as float32 bits, the RoPE layout
 *     (0: pairs (i, i + d/2), 1: (2i, 2i + 1));
 *   then per layer: K[tokens][kv_heads][head_dim], V of the same shape (positions
 *     0..tokens-1, keys after RoPE), Q[n_queries][q_heads][head_dim] (decode queries
 *     after RoPE, at position `tokens`) and, version 2, W[n_window][q_heads][head_dim]
 *     (the prefill's last queries after RoPE, at positions tokens - n_window ..).
 * Limits (a file outside them is refused): layers, kv_heads, head_dim and n_queries in
 * 1..1024, q_heads a multiple of kv_heads up to 4096, tokens 1..2^24, n_window at most
 * 4096 and at most tokens (when not 0, theta finite and > 0), and the file exactly as
 * long as the header says. A file that cannot be read, or is shorter or longer than its
 * header says, gives SKV_ERR_IO; a malformed header (magic, version, dtype, a field out
 * of range) SKV_ERR_INVALID_ARG; the message says which. Reading allocates nothing the
 * header sizes: tensors go into the caller's buffers. */
typedef struct skv_kvfile skv_kvfile;

typedef enum skv_kvfile_tensor {
    SKV_KVFILE_KEYS = 0,    /* rows are tokens: [tokens][kv_heads][head_dim] */
    SKV_KVFILE_VALUES = 1,  /* the same shape */
    SKV_KVFILE_QUERIES = 2, /* rows are decode queries: [n_queries][q_heads][head_dim] */
    SKV_KVFILE_WINDOW = 3   /* rows are prefill queries: [n_window][q_heads][head_dim] */
} skv_kvfile_tensor;

typedef struct skv_kvfile_info {
    size_t struct_size;  /* set by skv_kvfile_info_init, or sizeof(skv_kvfile_info) */
    uint32_t version;    /* 1 or 2 (version 1 stores no window and no RoPE: n_window 0) */
    skv_dtype dtype;     /* as stored: SKV_F32 or SKV_F16 (reads always give float32) */
    uint32_t layers, kv_heads, q_heads, head_dim;
    uint32_t tokens, n_queries, n_window;
    skv_rope_desc rope;  /* version 2: theta and interleaved (rotary_dims = head_dim, scaling 1) */
    uint64_t file_bytes; /* read: the file's size; write: ignored */
} skv_kvfile_info;

/* Version 2, float32, zero geometry. */
SKV_API void skv_kvfile_info_init(skv_kvfile_info *info);
/* Opens a file and checks its header and size. */
SKV_API skv_status skv_kvfile_open(const char *path, skv_kvfile **out);
/* The same over `size` bytes at `data` (not copied: they must outlive the handle). */
SKV_API skv_status skv_kvfile_open_memory(const void *data, size_t size, skv_kvfile **out);
SKV_API void skv_kvfile_close(skv_kvfile *file);
/* The header. out->struct_size must be set. */
SKV_API skv_status skv_kvfile_get_info(const skv_kvfile *file, skv_kvfile_info *out);
/* Rows [row_begin, row_begin + n_rows) of one tensor of one layer, as float32 in `out`
 * (n_rows x heads x head_dim floats; heads = kv_heads for keys and values, q_heads for
 * queries). Rows past the tensor's end are SKV_ERR_INVALID_ARG. */
SKV_API skv_status skv_kvfile_read(skv_kvfile *file, skv_kvfile_tensor tensor, uint32_t layer, uint64_t row_begin,
                                   uint64_t n_rows, float *out);
/* The bytes a file of `info` takes (the header's limits are checked). */
SKV_API skv_status skv_kvfile_size(const skv_kvfile_info *info, uint64_t *bytes);
/* Writes a whole file: k and v are [layers][tokens][kv_heads][head_dim], q
 * [layers][n_queries][q_heads][head_dim], w [layers][n_window][q_heads][head_dim] (NULL
 * when n_window is 0), float32; stored in info->dtype (fp16 rounds to nearest even).
 * The file is written to a temporary name beside `path` and renamed into place. */
SKV_API skv_status skv_kvfile_write(const char *path, const skv_kvfile_info *info, const float *k, const float *v,
                                    const float *q, const float *w);
/* The same into `capacity` bytes at `buf`; *size receives the file's size (with buf NULL
 * and capacity 0 only that; a smaller capacity is SKV_ERR_INVALID_ARG). */
SKV_API skv_status skv_kvfile_write_memory(const skv_kvfile_info *info, const float *k, const float *v,
                                           const float *q, const float *w, void *buf, size_t capacity,
                                           size_t *size);

#ifdef __cplusplus
}
#endif
#endif /* SKV_H */
