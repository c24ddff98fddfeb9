/* Internal declarations of the OpenCL host layer: the context object and helpers
 * around cl_* calls. Only host/ includes this file. */
#ifndef SKV_HOST_INTERNAL_H
#define SKV_HOST_INTERNAL_H

#include <math.h>
#include "skv_ref.h"
#include "skv/skv_cl.h"
#include "skv_internal.h"

typedef struct skvi_program {
    char *name;    /* embedded source name, e.g. "stream_read.cl" */
    char *defines; /* extra build options (tuning #defines), "" for none */
    cl_program program;
} skvi_program;

/* The tuning database (host/tuning.c): the file's entries for this device, and the
 * context's override. */
#define SKVI_TUNING_VERSION 1
typedef struct skvi_tuning_entry {
    skv_tuning_match level; /* how the entry names this device */
    int tier;               /* -1: any */
    uint32_t head_dim, group; /* 0: any */
    skv_decode_params p;    /* 0 fields: unset */
    char name[SKV_NAME_MAX];
} skvi_tuning_entry;

typedef struct skvi_tuning {
    skvi_tuning_entry *entries;
    size_t count;
    char path[1024];          /* the file looked for ("" when none) */
    char note[SKV_NAME_MAX];  /* why it was ignored */
    int has_override;
    skv_decode_params override;
} skvi_tuning;

/* Build-list mode (skv_context_desc.build_list): one program the host would build, with
 * the kernels it creates from it. */
typedef struct skvi_build_record {
    char *name, *options, *kernels, *source;
} skvi_build_record;

struct skv_context {
    skv_allocator allocator_copy;
    const skv_allocator *alloc; /* &allocator_copy, or NULL for malloc/free */
    char error[SKVI_ERROR_MAX];

    skv_device_profile profile;
    cl_platform_id platform;
    cl_device_id device;
    cl_context cl;
    cl_command_queue queue;    /* compute: the caller's, or ours */
    cl_command_queue transfer; /* page moves; always ours */
    cl_command_queue background; /* deferred compressions' reads and solver steps; always ours */
    int profiling;

    char *cache_dir; /* NULL: program cache disabled */
    skvi_program *programs;
    size_t program_count, program_capacity;
    skv_context_stats stats;
    skvi_tuning tuning;

    int build_list;             /* 1: record programs instead of compiling them */
    int poison;                 /* $SKV_DEBUG_POISON=1: new page memory and scratch filled with 0xFF */
    skvi_build_record *records; /* in the order first asked for */
    size_t record_count, record_capacity;
};

/* tuning.c: a database file's text[len] (text has room for len + 1 bytes; it is
 * terminated here), for the device `prof`: 1 and the entries that name it (free them with
 * skvi_free(a, ...)), or 0 and why the whole file is refused ("out of memory" among the
 * reasons). The bytes-to-entries step of skvi_tuning_load, alone for the fuzz harness. */
int skvi_tuning_parse(const skv_allocator *a, const skv_device_profile *prof, char *text, size_t len,
                      skvi_tuning_entry **entries, size_t *count, char *why, size_t n);
/* tuning.c: reads the database file (a bad one leaves a note; only OOM fails). */
skv_status skvi_tuning_load(skv_context *ctx);
void skvi_tuning_release(skv_context *ctx);
/* The parameters for a problem class (every field set), where they come from, and the
 * built-in entry's (the first fallback). */
void skvi_decode_params_lookup(const skv_context *ctx, skv_tier tier, uint32_t head_dim, uint32_t group,
                               skv_tuning_info *info);
/* Checks parameters (0 fields allowed when `partial`); 0 with the reason when invalid. */
int skvi_decode_params_check(const skv_decode_params *p, int partial, char *why, size_t n);
/* The set fields of `over` replace those of `base`. */
void skvi_decode_params_merge(skv_decode_params *base, const skv_decode_params *over);


/* clFinish on both queues; unlike skv_context_finish it keeps the thread's last error. */
skv_status skvi_finish(skv_context *ctx);
/* The process's first OpenCL calls (platform and device enumeration), made once under
 * pthread_once: every entry point that may be first calls this. */
void skvi_opencl_first_calls(void);
/* The index of the first of base[0..n) (in dtype) that is NaN or infinite, or n. */
static inline size_t skvi_first_nonfinite(skv_dtype dtype, const void *base, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(skv_ref_load(dtype, base, i)))
            return i;
    return n;
}
/* A caller's cl_mem, checked to be of the skv context's cl_context and to hold `bytes`
 * from `offset` (fn and what name it in the message). */
skv_status skvi_check_mem(skv_context *ctx, cl_mem m, size_t offset, size_t bytes, const char *fn, const char *what);

/* The OpenCL name of an error code ("CL_OUT_OF_RESOURCES"). */
const char *skvi_cl_error_name(cl_int err);
/* Records a failed OpenCL call and maps its code to a status
 * (allocation failures -> SKV_ERR_DEVICE_OUT_OF_MEMORY, else SKV_ERR_OPENCL). */
skv_status skvi_cl_fail(char *ctx_error, cl_int err, const char *what);

/* Fills the profile of one device. */
skv_status skvi_device_profile_query(const skv_allocator *a, cl_platform_id platform,
                                     cl_device_id device, unsigned pi, unsigned di,
                                     skv_device_profile *out, char *err);
/* Resolves a selector (see skv_device_select) to a device and its profile. */
skv_status skvi_device_resolve(const skv_allocator *a, const char *selector,
                               skv_device_profile *prof, cl_platform_id *platform,
                               cl_device_id *device, char *err);

/* The program built from embedded source `name` with extra build options `defines`
 * (NULL = none): from the context's table, else the disk cache, else the compiler. */
skv_status skvi_program_get(skv_context *ctx, const char *name, const char *defines,
                            cl_program *out);
void skvi_build_record_free(skv_context *ctx, skvi_build_record *r);
/* hetero.c: the top-k of `rows` rows of n weights (row r at w + r * w_stride floats):
 * out[r * out_stride ..] the indices of the min(top_k, n) largest, ascending, ties by
 * lower index (skv_ref_topk); counts[r] how many. The kernel runs work-groups of
 * SKVI_TOPK_WG (cl/topk.cl); skvi_topk_kernel checks the device allows them. */
#define SKVI_TOPK_WG 256
skv_status skvi_topk_kernel(skv_context *ctx, cl_kernel *out);
/* wout[r][i] = w[r * w_stride + sets[r * set_stride + i]] for i < counts[r]
 * (cl/topk.cl topk_gather; the kernel from skvi_kernel_create "topk.cl" "topk_gather"). */
skv_status skvi_topk_gather_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t w_stride,
                                    cl_mem sets, uint32_t set_stride, cl_mem counts, cl_mem wout);
skv_status skvi_topk_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t n, uint32_t w_stride,
                             uint32_t top_k, cl_mem out, uint32_t out_stride, cl_mem counts);
/* Fills a new buffer with 0xFF bytes (NaN as float and half, -1 as a position), so that a
 * kernel reading what nothing wrote shows it (ctx->poison; tests). */
cl_int skvi_poison(skv_context *ctx, cl_mem buf, size_t bytes);
/* The same fill, enqueued on the compute queue without a wait: for buffers only that
 * queue uses (decode's workspace), so that an interop call never blocks. */
cl_int skvi_poison_enqueue(skv_context *ctx, cl_mem buf, size_t bytes);
/* A kernel object from a program (the caller releases it). In build-list mode the
 * program is recorded and the kernel is a stand-in of the same name. */
skv_status skvi_kernel_create(skv_context *ctx, const char *source, const char *defines,
                              const char *kernel, cl_kernel *out);
void skvi_programs_release(skv_context *ctx);
/* Programs skv_context_prepare builds (those that need no cache geometry): source
 * name and the device-dependent defines it is built with. */
typedef struct skvi_context_program {
    const char *name;
    const char *(*defines)(const skv_context *ctx);
} skvi_context_program;
extern const skvi_context_program skvi_context_programs[];
extern const size_t skvi_context_program_count;

/* kargs.c: a kernel's arguments bound in order, keeping the first failure:
 *     skvi_args a = skvi_args_begin(k, 0);
 *     skvi_arg_mem(&a, buf); skvi_arg_u32(&a, n);
 *     cl_int e = skvi_args_end(&a);   (skvi_args_fail names the kernel and argument)
 * In debug builds, skvi_args_end of a binding begun at argument 0 checks that it bound
 * exactly CL_KERNEL_NUM_ARGS arguments (CL_INVALID_KERNEL_ARGS when not). */
typedef struct skvi_args {
    cl_kernel k;
    cl_uint first, next; /* where the binding began; the next argument's index */
    cl_int err;          /* the first failure (CL_SUCCESS: none) */
    cl_uint err_arg;     /* its argument index */
} skvi_args;
skvi_args skvi_args_begin(cl_kernel k, cl_uint first);
void skvi_arg(skvi_args *a, size_t size, const void *value);
void skvi_arg_mem(skvi_args *a, cl_mem m);
void skvi_arg_u32(skvi_args *a, cl_uint v);
void skvi_arg_u64(skvi_args *a, cl_ulong v);
void skvi_arg_f32(skvi_args *a, cl_float v);
cl_int skvi_args_end(skvi_args *a);
skv_status skvi_args_fail(char *ctx_error, const skvi_args *a, const char *what);

/* A launch of exactly global[] work-items (dims 1..3) of a kernel that takes any local
 * size (`dev`: the queue's device), in at most two shapes: work-groups of SKVI_ITEMS_WG (or the kernel's most)
 * along the first dimension over the largest multiple of it, then the rest in groups
 * of 1 at an offset. PoCL compiles a kernel anew for every local size it meets and
 * picks one from the global size when given none, so launches whose item counts change
 * from call to call (RDR's packing and scoring, appends) built a new kernel in almost
 * every compression (docs/perf.md). The queue must be in order: the waits go with the
 * first launch and `done` (NULL: none) with the last. */
#define SKVI_ITEMS_WG 64
cl_int skvi_enqueue_items(cl_device_id dev, cl_command_queue q, cl_kernel k, cl_uint dims, const size_t *global,
                          cl_uint n_waits, const cl_event *waits, cl_event *done);
/* One launch, global[0] rounded up to SKVI_ITEMS_WG, for a kernel that ignores the
 * work-items past its count and whose effect a half-made launch would corrupt (observe
 * accumulates: a failed call must have added nothing). The kernel must allow that size. */
cl_int skvi_enqueue_padded(cl_command_queue q, cl_kernel k, cl_uint dims, const size_t *global, cl_uint n_waits,
                           const cl_event *waits, cl_event *done);

/* Enqueues cl/stream_read.cl over n_words 16-byte words with n_items work-items, in the
 * blocked partition when skvi_stream_read_blocked(ctx) (CPU devices), else strided. */
int skvi_stream_read_blocked(const skv_context *ctx);
const char *skvi_stream_read_defines(const skv_context *ctx);
skv_status skvi_stream_read_enqueue(skv_context *ctx, cl_command_queue q, cl_mem in, uint64_t n_words,
                                    size_t n_items, cl_mem out, cl_event *ev);

#endif /* SKV_HOST_INTERNAL_H */
