/* HeteroCache on the device: the top-k of rows of weights (cl/topk.cl). */
#include "host_internal.h"

skv_status skvi_topk_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t n, uint32_t w_stride,
                             uint32_t top_k, cl_mem out, uint32_t out_stride, cl_mem counts)
{
    if (rows == 0)
        return SKV_OK;
    if (w_stride < n || out_stride < (top_k < n ? top_k : n))
        return skvi_fail(ctx->error, SKV_ERR_INTERNAL, "top-k: a row stride is shorter than its row");
    skvi_args a = skvi_args_begin(k, 0);
    skvi_arg_mem(&a, w);
    skvi_arg_u32(&a, n);
    skvi_arg_u32(&a, w_stride);
    skvi_arg_u32(&a, top_k);
    skvi_arg_mem(&a, out);
    skvi_arg_u32(&a, out_stride);
    skvi_arg_mem(&a, counts);
    size_t local = SKVI_TOPK_WG, global = (size_t)rows * local;
    cl_int e = skvi_args_end(&a);
    if (e != CL_SUCCESS)
        return skvi_args_fail(ctx->error, &a, "top-k: enqueue");
    e = clEnqueueNDRangeKernel(ctx->queue, k, 1, NULL, &global, &local, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "top-k: enqueue");
}

skv_status skvi_topk_gather_enqueue(skv_context *ctx, cl_kernel k, cl_mem w, uint32_t rows, uint32_t w_stride,
                                    cl_mem sets, uint32_t set_stride, cl_mem counts, cl_mem wout)
{
    if (rows == 0 || set_stride == 0)
        return SKV_OK;
    skvi_args a = skvi_args_begin(k, 0);
    skvi_arg_mem(&a, w);
    skvi_arg_u32(&a, w_stride);
    skvi_arg_mem(&a, sets);
    skvi_arg_u32(&a, set_stride);
    skvi_arg_mem(&a, counts);
    skvi_arg_mem(&a, wout);
    size_t global[2] = {set_stride, rows};
    cl_int e = skvi_args_end(&a);
    if (e != CL_SUCCESS)
        return skvi_args_fail(ctx->error, &a, "top-k gather: enqueue");
    e = clEnqueueNDRangeKernel(ctx->queue, k, 2, NULL, global, NULL, 0, NULL, NULL);
    return e == CL_SUCCESS ? SKV_OK : skvi_cl_fail(ctx->error, e, "top-k gather: enqueue");
}

skv_status skvi_topk_kernel(skv_context *ctx, cl_kernel *out)
{
    skv_status st = skvi_kernel_create(ctx, "topk.cl", NULL, "topk_select", out);
    if (st != SKV_OK || ctx->build_list)
        return st;
    size_t wg = 0;
    cl_int e = clGetKernelWorkGroupInfo(*out, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    if (e == CL_SUCCESS && wg >= SKVI_TOPK_WG)
        return SKV_OK;
    clReleaseKernel(*out);
    *out = NULL;
    return e != CL_SUCCESS ? skvi_cl_fail(ctx->error, e, "top-k: clGetKernelWorkGroupInfo")
                           : skvi_fail(ctx->error, SKV_ERR_UNSUPPORTED,
                                       "top-k: the kernel runs at most %zu work-items per group, needs %d", wg,
                                       SKVI_TOPK_WG);
}

/* ---- HeteroCache on the paged cache (DESIGN.md §7b) ------------------------------------ */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_internal.h"

struct skv_hetero_profile {
    uint32_t layers, heads;
    skv_head_category *category; /* [layers][heads] */
    uint32_t *pivot;
    float *stability;
};

void skv_hetero_desc_init(skv_hetero_desc *d)
{
    if (!d)
        return;
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
    d->top_k = 1024;
    d->tau_sim = 0.5f;
    d->tau_stable = 0.5f;
    d->eps = 0.1f;
    d->max_steps = 64;
    d->check_steps = 5;
    d->retrieval = 1;
}

static skv_status check_desc(char *err, const skv_hetero_desc *d, const char *fn)
{
    if (!d)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc is NULL", fn);
    if (d->struct_size != sizeof *d)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.struct_size is %zu, expected %zu (skv_hetero_desc_init)",
                         fn, d->struct_size, sizeof *d);
    if (d->top_k == 0 || d->top_k > (1u << 24))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.top_k %u is not in 1..2^24", fn, d->top_k);
    if (!(d->tau_sim >= 0.0f && d->tau_sim <= 1.0f) || !(d->tau_stable >= 0.0f && d->tau_stable <= 1.0f))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.tau_sim and tau_stable must be in [0, 1]", fn);
    if (!(d->eps > 0.0f && d->eps <= 1e6f))
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.eps must be positive", fn);
    if (d->max_steps == 0 || d->max_steps > 4096)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.max_steps %u is not in 1..4096", fn, d->max_steps);
    if (d->check_steps == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.check_steps is 0", fn);
    if (d->retrieval != 0 && d->retrieval != 1)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: desc.retrieval must be 0 or 1", fn);
    return SKV_OK;
}

/* ---- profiles ---- */

static skv_hetero_profile *profile_new(uint32_t layers, uint32_t heads)
{
    skv_hetero_profile *p = calloc(1, sizeof *p);
    const size_t n = (size_t)layers * heads;
    if (!p)
        return NULL;
    p->layers = layers;
    p->heads = heads;
    p->category = calloc(n, sizeof *p->category);
    p->pivot = calloc(n, sizeof *p->pivot);
    p->stability = calloc(n, sizeof *p->stability);
    if (!p->category || !p->pivot || !p->stability) {
        skv_hetero_profile_free(p);
        return NULL;
    }
    return p;
}

void skv_hetero_profile_free(skv_hetero_profile *p)
{
    if (!p)
        return;
    free(p->category);
    free(p->pivot);
    free(p->stability);
    free(p);
}

/* A profile's invariants: categories in range, a satellite's pivot a pivot of its layer,
 * every other head its own pivot, stabilities in [0, 1]. */
static skv_status check_profile(char *err, const skv_hetero_profile *p, const char *fn)
{
    for (uint32_t l = 0; l < p->layers; l++)
        for (uint32_t h = 0; h < p->heads; h++) {
            const size_t i = (size_t)l * p->heads + h;
            const skv_head_category c = p->category[i];
            if ((unsigned)c > SKV_HEAD_VOLATILE)
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: category %d", fn, l, h, (int)c);
            if (!(p->stability[i] >= 0.0f && p->stability[i] <= 1.0f))
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: stability %g is not in [0, 1]", fn,
                                 l, h, (double)p->stability[i]);
            const uint32_t pv = p->pivot[i];
            if (c == SKV_HEAD_SATELLITE) {
                if (pv >= p->heads || p->category[(size_t)l * p->heads + pv] != SKV_HEAD_PIVOT)
                    return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: satellite of %u, not a pivot", fn,
                                     l, h, pv);
            } else if (pv != h) {
                return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: layer %u head %u: a %s is its own pivot, not %u", fn, l,
                                 h, skv_head_category_str(c), pv);
            }
        }
    return SKV_OK;
}

skv_status skv_hetero_profile_create(uint32_t layers, uint32_t heads, const skv_head_category *category,
                                     const uint32_t *pivot, const float *stability, skv_hetero_profile **out)
{
    skvi_clear_error();
    if (!category || !pivot || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_create: category, pivot or out is NULL");
    if (layers == 0 || heads == 0 || layers > 4096 || heads > 4096)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_create: %u layers x %u heads", layers, heads);
    skv_hetero_profile *p = profile_new(layers, heads);
    if (!p)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_profile_create: out of memory");
    const size_t n = (size_t)layers * heads;
    memcpy(p->category, category, n * sizeof *category);
    memcpy(p->pivot, pivot, n * sizeof *pivot);
    for (size_t i = 0; i < n; i++)
        p->stability[i] = stability ? stability[i] : (category[i] == SKV_HEAD_VOLATILE ? 0.0f : 1.0f);
    skv_status st = check_profile(NULL, p, "skv_hetero_profile_create");
    if (st != SKV_OK) {
        skv_hetero_profile_free(p);
        return st;
    }
    *out = p;
    return SKV_OK;
}

skv_status skv_hetero_profile_shape(const skv_hetero_profile *p, uint32_t *layers, uint32_t *heads)
{
    skvi_clear_error();
    if (!p || !layers || !heads)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_shape: an argument is NULL");
    *layers = p->layers;
    *heads = p->heads;
    return SKV_OK;
}

skv_status skv_hetero_profile_head(const skv_hetero_profile *p, uint32_t layer, uint32_t head,
                                   skv_head_category *category, uint32_t *pivot, float *stability)
{
    skvi_clear_error();
    if (!p)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_head: profile is NULL");
    if (layer >= p->layers || head >= p->heads)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_head: layer %u / head %u of %u x %u", layer,
                         head, p->layers, p->heads);
    const size_t i = (size_t)layer * p->heads + head;
    if (category)
        *category = p->category[i];
    if (pivot)
        *pivot = p->pivot[i];
    if (stability)
        *stability = p->stability[i];
    return SKV_OK;
}

#define PROFILE_MAGIC "skv-hetero-profile"
#define PROFILE_VERSION 1

skv_status skv_hetero_profile_save(const skv_hetero_profile *p, const char *path)
{
    skvi_clear_error();
    if (!p || !path)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_save: profile or path is NULL");
    FILE *f = fopen(path, "w");
    if (!f)
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_save: cannot write %s", path);
    int bad = fprintf(f, "%s %d\nlayers %u kv_heads %u\n", PROFILE_MAGIC, PROFILE_VERSION, p->layers, p->heads) < 0;
    for (uint32_t l = 0; l < p->layers && !bad; l++)
        for (uint32_t h = 0; h < p->heads && !bad; h++) {
            const size_t i = (size_t)l * p->heads + h;
            bad = fprintf(f, "%u %u %s %u %.9g\n", l, h, skv_head_category_str(p->category[i]), p->pivot[i],
                          (double)p->stability[i]) < 0;
        }
    bad |= fprintf(f, "end\n") < 0;
    bad |= fclose(f) != 0;
    return bad ? skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_save: writing %s failed", path) : SKV_OK;
}

static int category_from(const char *s, skv_head_category *c)
{
    for (int i = 0; i <= SKV_HEAD_VOLATILE; i++)
        if (strcmp(s, skv_head_category_str((skv_head_category)i)) == 0) {
            *c = (skv_head_category)i;
            return 1;
        }
    return 0;
}

/* Parses a whole profile from text; NULL (and a message in err) when anything is off. */
static skv_hetero_profile *profile_parse(const char *text, char *err, size_t err_size)
{
    char magic[32] = "", word[16];
    int version = 0, used = 0;
    unsigned L = 0, H = 0;
    if (sscanf(text, "%31s %d%n", magic, &version, &used) != 2 || strcmp(magic, PROFILE_MAGIC) != 0) {
        snprintf(err, err_size, "not a HeteroCache profile (no '%s' header)", PROFILE_MAGIC);
        return NULL;
    }
    if (version != PROFILE_VERSION) {
        snprintf(err, err_size, "version %d, this library reads version %d", version, PROFILE_VERSION);
        return NULL;
    }
    text += used;
    if (sscanf(text, " layers %u kv_heads %u%n", &L, &H, &used) != 2 || L == 0 || H == 0 || L > 4096 || H > 4096) {
        snprintf(err, err_size, "a bad 'layers N kv_heads M' line");
        return NULL;
    }
    text += used;
    skv_hetero_profile *p = profile_new(L, H);
    if (!p) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < (size_t)L * H; i++) {
        unsigned l, h, pv;
        float stab;
        char name[16];
        if (sscanf(text, " %u %u %15s %u %f%n", &l, &h, name, &pv, &stab, &used) != 5 || l != i / H || h != i % H ||
            !category_from(name, &p->category[i])) {
            snprintf(err, err_size, "line for layer %zu head %zu is missing or malformed", i / H, i % H);
            skv_hetero_profile_free(p);
            return NULL;
        }
        p->pivot[i] = pv;
        p->stability[i] = stab;
        text += used;
    }
    if (sscanf(text, " %15s%n", word, &used) != 1 || strcmp(word, "end") != 0 || text[used + strspn(text + used, " \t\r\n")]) {
        snprintf(err, err_size, "no 'end' line after the heads, or data after it");
        skv_hetero_profile_free(p);
        return NULL;
    }
    char why[SKVI_ERROR_MAX];
    why[0] = 0;
    if (check_profile(why, p, "profile") != SKV_OK) {
        snprintf(err, err_size, "%s", why);
        skv_hetero_profile_free(p);
        return NULL;
    }
    return p;
}

skv_status skv_hetero_profile_load(const char *path, uint32_t layers, uint32_t heads, skv_hetero_profile **out)
{
    skvi_clear_error();
    if (!path || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: path or out is NULL");
    FILE *f = fopen(path, "rb");
    if (!f)
        return skvi_fail(NULL, SKV_ERR_IO, "skv_hetero_profile_load: cannot open %s", path);
    enum { MAX_BYTES = 1 << 26 };
    char *text = malloc(MAX_BYTES + 1);
    size_t n = text ? fread(text, 1, MAX_BYTES + 1, f) : 0;
    fclose(f);
    if (!text)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_profile_load: out of memory");
    if (n > MAX_BYTES || memchr(text, 0, n)) {
        free(text);
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: %s: too large or not text", path);
    }
    text[n] = 0;
    char why[256];
    skv_hetero_profile *p = profile_parse(text, why, sizeof why);
    free(text);
    if (!p)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_profile_load: %s: %s", path, why);
    if ((layers || heads) && (p->layers != layers || p->heads != heads)) {
        skv_status st = skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                                  "skv_hetero_profile_load: %s is for %u layers x %u kv-heads, not %u x %u", path,
                                  p->layers, p->heads, layers, heads);
        skv_hetero_profile_free(p);
        return st;
    }
    *out = p;
    return SKV_OK;
}

/* ---- calibration ---- */

void skvi_calib_release(skv_cache *c, skvi_seq *s)
{
    skvi_calib *k = s->calib;
    if (!k)
        return;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        if (k->sets && k->sets[l])
            clReleaseMemObject(k->sets[l]);
        if (k->counts && k->counts[l])
            clReleaseMemObject(k->counts[l]);
    }
    skvi_free(c->ctx->alloc, k->sets);
    skvi_free(c->ctx->alloc, k->counts);
    skvi_free(c->ctx->alloc, k->steps);
    skvi_free(c->ctx->alloc, k->extra);
    skvi_free(c->ctx->alloc, k);
    s->calib = NULL;
}

skv_status skvi_hetero_kernels(skv_cache *c)
{
    skv_status st = c->k_topk ? SKV_OK : skvi_topk_kernel(c->ctx, &c->k_topk);
    if (st == SKV_OK && !c->k_topk_gather)
        st = skvi_kernel_create(c->ctx, "topk.cl", NULL, "topk_gather", &c->k_topk_gather);
    return st;
}

skv_status skv_hetero_calibrate_begin(skv_cache *c, skv_seq_id seq, const skv_hetero_desc *desc)
{
    static const char fn[] = "skv_hetero_calibrate_begin";
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: cache is NULL", fn);
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st == SKV_OK)
        st = check_desc(c->ctx->error, desc, fn);
    if (st != SKV_OK)
        return st;
    if (s->calib)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u is calibrating already", fn, seq);
    st = skvi_hetero_kernels(c);
    if (st != SKV_OK)
        return st;
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads;
    const skv_allocator *a = c->ctx->alloc;
    skvi_calib *k = skvi_calloc(a, 1, sizeof *k);
    if (k) {
        s->calib = k;
        k->desc = *desc;
        k->sets = skvi_calloc(a, L, sizeof *k->sets);
        k->counts = skvi_calloc(a, L, sizeof *k->counts);
        k->steps = skvi_calloc(a, L, sizeof *k->steps);
        k->extra = skvi_calloc(a, L, sizeof *k->extra);
    }
    if (!k || !k->sets || !k->counts || !k->steps || !k->extra) {
        skvi_calib_release(c, s);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    cl_int e = CL_SUCCESS;
    const size_t set_bytes = (size_t)desc->max_steps * H * desc->top_k * sizeof(cl_uint);
    for (uint32_t l = 0; e == CL_SUCCESS && l < L; l++) {
        k->sets[l] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, set_bytes, NULL, &e);
        if (e == CL_SUCCESS)
            k->counts[l] = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, (size_t)desc->max_steps * H * sizeof(cl_uint),
                                          NULL, &e);
    }
    if (e != CL_SUCCESS) {
        skvi_calib_release(c, s);
        return skvi_cl_fail(c->ctx->error, e, "skv_hetero_calibrate_begin: clCreateBuffer");
    }
    return SKV_OK;
}

skv_status skv_hetero_calibrate_abort(skv_cache *c, skv_seq_id seq)
{
    skvi_clear_error();
    if (!c)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_hetero_calibrate_abort: cache is NULL");
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, "skv_hetero_calibrate_abort", &s);
    if (st != SKV_OK)
        return st;
    if (!s->calib)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "skv_hetero_calibrate_abort: sequence %u is not calibrating",
                         seq);
    st = skvi_finish(c->ctx); /* enqueued steps write into the buffers */
    skvi_calib_release(c, s);
    return st;
}

/* One layer's categories from its recorded sets (host copies). */
static skv_status classify_layer(skv_cache *c, const skvi_calib *k, uint32_t l, const uint32_t *sets,
                                 const uint32_t *counts, skv_hetero_profile *p)
{
    const uint32_t H = c->desc.kv_heads, K = k->desc.top_k, T = k->steps[l];
    float *sim = skvi_calloc(c->ctx->alloc, (size_t)H * H, sizeof *sim);
    uint32_t *head_counts = skvi_calloc(c->ctx->alloc, T, sizeof *head_counts);
    if (!sim || !head_counts) {
        skvi_free(c->ctx->alloc, sim);
        skvi_free(c->ctx->alloc, head_counts);
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_hetero_calibrate_end: out of memory");
    }
    float *stab = p->stability + (size_t)l * H;
    for (uint32_t h = 0; h < H; h++) {
        const uint32_t *ref = sets + (size_t)h * K; /* step 0 */
        const uint32_t ref_n = counts[h];
        /* set t of head h: sets + (t * H + h) * K */
        const uint32_t first = T > 1 ? 1 : 0; /* the steps after the reference */
        for (uint32_t t = first; t < T; t++)
            head_counts[t - first] = counts[(size_t)t * H + h];
        stab[h] = skv_ref_hetero_stability(sets + ((size_t)first * H + h) * K, head_counts, T - first, H * K, ref,
                                           ref_n, ref_n ? ref_n : 1);
        for (uint32_t g = h + 1; g < H; g++) {
            double sum = 0;
            for (uint32_t t = 0; t < T; t++) {
                const size_t a = (size_t)t * H + h, b = (size_t)t * H + g;
                const uint32_t n = counts[a] > counts[b] ? counts[a] : counts[b];
                sum += n ? (double)skv_ref_set_overlap(sets + a * K, counts[a], sets + b * K, counts[b]) / n : 1.0;
            }
            sim[(size_t)h * H + g] = sim[(size_t)g * H + h] = (float)(sum / T);
        }
        sim[(size_t)h * H + h] = 1.0f;
    }
    skv_status st = skv_ref_hetero_classify(H, stab, sim, k->desc.tau_sim, k->desc.tau_stable,
                                            p->category + (size_t)l * H, p->pivot + (size_t)l * H);
    skvi_free(c->ctx->alloc, sim);
    skvi_free(c->ctx->alloc, head_counts);
    return st;
}

skv_status skv_hetero_calibrate_end(skv_cache *c, skv_seq_id seq, skv_hetero_profile **out)
{
    static const char fn[] = "skv_hetero_calibrate_end";
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache or out is NULL", fn);
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st != SKV_OK)
        return st;
    skvi_calib *k = s->calib;
    if (!k)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: sequence %u is not calibrating", fn, seq);
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads, K = k->desc.top_k;
    for (uint32_t l = 0; l < L; l++)
        if (k->steps[l] == 0)
            return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "%s: layer %u saw no decode step of sequence %u", fn, l,
                             seq);
    skv_hetero_profile *p = profile_new(L, H);
    uint32_t *sets = skvi_alloc(c->ctx->alloc, (size_t)k->desc.max_steps * H * K * sizeof *sets);
    uint32_t *counts = skvi_alloc(c->ctx->alloc, (size_t)k->desc.max_steps * H * sizeof *counts);
    if (!p || !sets || !counts)
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (uint32_t l = 0; st == SKV_OK && l < L; l++) {
        const uint32_t T = k->steps[l];
        cl_int e = clEnqueueReadBuffer(c->ctx->queue, k->sets[l], CL_TRUE, 0, (size_t)T * H * K * sizeof *sets, sets, 0,
                                       NULL, NULL);
        if (e == CL_SUCCESS)
            e = clEnqueueReadBuffer(c->ctx->queue, k->counts[l], CL_TRUE, 0, (size_t)T * H * sizeof *counts, counts, 0,
                                    NULL, NULL);
        if (e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "skv_hetero_calibrate_end: clEnqueueReadBuffer");
        if (st == SKV_OK)
            st = classify_layer(c, k, l, sets, counts, p);
    }
    skvi_free(c->ctx->alloc, sets);
    skvi_free(c->ctx->alloc, counts);
    if (st != SKV_OK) {
        skv_hetero_profile_free(p);
        return st;
    }
    skvi_calib_release(c, s);
    *out = p;
    return SKV_OK;
}

/* ---- HeteroCache on a sequence ---- */

void skvi_hetero_release(skv_cache *c, skvi_seq *s)
{
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    const skv_allocator *a = c->ctx->alloc;
    for (uint32_t l = 0; l < c->desc.layers; l++) {
        if (x->now_read && x->now_read[l]) {
            clWaitForEvents(1, &x->now_read[l]); /* it writes into x->now */
            clReleaseEvent(x->now_read[l]);
        }
        if (x->pos)
            skvi_free(a, x->pos[l]);
    }
    for (size_t i = 0; i < x->n_fl; i++)
        clReleaseEvent(x->fl[i].done);
    void *arrays[] = {x->cat, x->pivot, x->stability, x->ref, x->ref_n, x->ref_w, x->now, x->now_n, x->now_w,
                      x->now_read, x->steps,
                      x->share, x->pos, x->pos_n, x->pos_cap, x->fl};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        skvi_free(a, arrays[i]);
    skvi_free(a, x);
    s->hetero = NULL;
}

skv_status skv_seq_hetero(skv_cache *c, skv_seq_id seq, const skv_hetero_profile *p, const skv_hetero_desc *desc)
{
    static const char fn[] = "skv_seq_hetero";
    skvi_clear_error();
    if (!c || !p)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "%s: cache or profile is NULL", fn);
    char *err = c->ctx->error;
    skvi_seq *s = NULL;
    skv_status st = skvi_seq_get(c, seq, fn, &s);
    if (st == SKV_OK)
        st = check_desc(err, desc, fn);
    if (st != SKV_OK)
        return st;
    const uint32_t L = c->desc.layers, H = c->desc.kv_heads;
    if (p->layers != L || p->heads != H)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: the profile is for %u layers x %u kv-heads, the cache has %u x %u",
                         fn, p->layers, p->heads, L, H);
    if (c->desc.retention != SKV_RETENTION_RDR)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: HeteroCache's budgets run through RDR: the cache has no retention",
                         fn);
    if (s->hetero)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: HeteroCache runs on sequence %u already", fn, seq);
    for (uint32_t l = 0; l < L; l++)
        if (s->len[l])
            return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: sequence %u holds tokens (HeteroCache starts empty)", fn,
                             seq);
    int satellites = 0;
    for (uint32_t l = 0; l < L; l++) {
        uint32_t whole = 0;
        for (uint32_t h = 0; h < H; h++) {
            const skv_head_category k = p->category[(size_t)l * H + h];
            whole += k == SKV_HEAD_PIVOT || k == SKV_HEAD_VOLATILE;
            satellites |= k == SKV_HEAD_SATELLITE;
        }
        if ((double)whole > (double)c->desc.budget_ratio * H)
            return skvi_fail(err, SKV_ERR_INVALID_ARG,
                             "%s: layer %u: %u of %u kv-heads keep their whole cache, more than budget_ratio %g allows",
                             fn, l, whole, H, (double)c->desc.budget_ratio);
    }
    if (satellites && c->budget[SKV_MEM_HOST] == 0)
        return skvi_fail(err, SKV_ERR_INVALID_ARG, "%s: the profile has satellites and the cache no host tier "
                                                   "(host_budget_bytes)", fn);
    st = skvi_hetero_kernels(c);
    if (st != SKV_OK)
        return st;
    const skv_allocator *a = c->ctx->alloc;
    const size_t n = (size_t)L * H, K = desc->top_k;
    skvi_hetero *x = skvi_calloc(a, 1, sizeof *x);
    if (x) {
        s->hetero = x;
        x->desc = *desc;
        x->k = desc->top_k;
        x->cat = skvi_calloc(a, n, sizeof *x->cat);
        x->pivot = skvi_calloc(a, n, sizeof *x->pivot);
        x->stability = skvi_calloc(a, n, sizeof *x->stability);
        x->ref = skvi_calloc(a, n * K, sizeof *x->ref);
        x->ref_n = skvi_calloc(a, n, sizeof *x->ref_n);
        x->ref_w = skvi_calloc(a, n * K, sizeof *x->ref_w);
        x->now_w = skvi_calloc(a, n * K, sizeof *x->now_w);
        x->now = skvi_calloc(a, n * K, sizeof *x->now);
        x->now_n = skvi_calloc(a, n, sizeof *x->now_n);
        x->now_read = skvi_calloc(a, L, sizeof *x->now_read);
        x->steps = skvi_calloc(a, L, sizeof *x->steps);
        x->share = skvi_calloc(a, n, sizeof *x->share);
        x->pos = skvi_calloc(a, L, sizeof *x->pos);
        x->pos_n = skvi_calloc(a, L, sizeof *x->pos_n);
        x->pos_cap = skvi_calloc(a, L, sizeof *x->pos_cap);
    }
    if (!x || !x->cat || !x->pivot || !x->stability || !x->ref || !x->ref_n || !x->ref_w || !x->now || !x->now_n ||
        !x->now_w || !x->now_read ||
        !x->steps || !x->share || !x->pos || !x->pos_n || !x->pos_cap) {
        skvi_hetero_release(c, s);
        return skvi_fail(err, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    }
    memcpy(x->cat, p->category, n * sizeof *x->cat);
    memcpy(x->pivot, p->pivot, n * sizeof *x->pivot);
    memcpy(x->stability, p->stability, n * sizeof *x->stability);
    return SKV_OK;
}

skv_status skvi_hetero_reserve(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t n)
{
    skvi_hetero *x = s->hetero;
    if (x && skvi_array_reserve(c->ctx->alloc, (void **)&x->pos[layer], &x->pos_cap[layer], x->pos_n[layer],
                                x->pos_n[layer] + n, sizeof *x->pos[layer], 1024) != 0)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_append: out of memory");
    return SKV_OK;
}

void skvi_hetero_note(skv_cache *c, skvi_seq *s, uint32_t layer, const int32_t *positions, uint32_t n)
{
    (void)c;
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    memcpy(x->pos[layer] + x->pos_n[layer], positions, n * sizeof *positions);
    x->pos_n[layer] += n;
}

/* ---- budgets and placement ---- */

static skv_head_category category_of(const skvi_hetero *x, const skv_cache *c, uint32_t layer, uint32_t head)
{
    return x->cat[(size_t)layer * c->desc.kv_heads + head];
}

int skvi_hetero_rdr_head(const skvi_seq *s, const skv_cache *c, uint32_t layer, uint32_t head)
{
    return !s->hetero || category_of(s->hetero, c, layer, head) == SKV_HEAD_ANCHOR;
}

skv_status skvi_hetero_budgets(skv_cache *c, skvi_seq *s, uint32_t layer, uint64_t layer_tokens, uint64_t *per_head)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads;
    uint64_t *length = skvi_calloc(c->ctx->alloc, H, sizeof *length);
    if (!length)
        return skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "skv_compress: out of memory");
    uint64_t whole = 0;
    for (uint32_t h = 0; h < H; h++) {
        length[h] = s->len[layer];
        const skv_head_category k = category_of(x, c, layer, h);
        whole += k == SKV_HEAD_PIVOT || k == SKV_HEAD_VOLATILE ? length[h] : 0;
    }
    /* pivots and volatile heads first; a budget below them (rounding, a pyramid's last
     * layers) leaves the others their floors (sinks and recent window) */
    skv_status st = skv_ref_hetero_budgets(H, x->cat + (size_t)layer * H, x->stability + (size_t)layer * H, length,
                                           layer_tokens > whole ? layer_tokens : whole, x->desc.eps, per_head);
    for (uint32_t h = 0; st == SKV_OK && h < H; h++)
        x->share[(size_t)layer * H + h] = per_head[h];
    skvi_free(c->ctx->alloc, length);
    return st == SKV_OK ? SKV_OK : skvi_fail(c->ctx->error, st, "skv_compress: %s", skv_last_error());
}

/* Index of `pos` in the layer's append order (-1: none). Positions usually ascend: a
 * binary search, else a scan. */
static int64_t index_of(const skvi_hetero *x, uint32_t layer, int32_t pos)
{
    const int32_t *p = x->pos[layer];
    size_t lo = 0, hi = x->pos_n[layer];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p[mid] < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < x->pos_n[layer] && p[lo] == pos)
        return (int64_t)lo;
    for (size_t i = 0; i < x->pos_n[layer]; i++)
        if (p[i] == pos)
            return (int64_t)i;
    return -1;
}

static int in_flight(const skvi_hetero *x, uint32_t list, uint32_t entry)
{
    for (size_t i = 0; i < x->n_fl; i++)
        if (x->fl[i].list == list && x->fl[i].entry == entry)
            return 1;
    return 0;
}

int skvi_hetero_entry_ready(skv_cache *c, skvi_seq *s, uint32_t list, uint32_t entry)
{
    (void)c;
    return !in_flight(s->hetero, list, entry);
}

/* Pages of a satellite's F16 list that never leave the device: those holding sinks, the
 * recent window and the tail (the page appends go to). */
static int protected_page(const skv_cache *c, const skvi_page_list *l, uint32_t j)
{
    const uint32_t P = c->desc.page_tokens;
    const uint64_t recent_first = l->tokens > c->desc.recent_window ? l->tokens - c->desc.recent_window : 0;
    return (uint64_t)j * P < c->desc.n_sink || (uint64_t)(j + 1) * P > recent_first || j + 1 == l->n;
}

/* Per page of the list, the attention weight of the set's positions it holds. */
static void page_mass(const skv_cache *c, const skvi_hetero *x, uint32_t layer, const uint32_t *set, const float *w,
                      uint32_t n, double *mass, uint32_t pages)
{
    memset(mass, 0, pages * sizeof *mass);
    for (uint32_t i = 0; i < n; i++) {
        int64_t idx = index_of(x, layer, (int32_t)set[i]);
        if (idx >= 0 && (uint64_t)idx / c->desc.page_tokens < pages)
            mass[idx / c->desc.page_tokens] += w[i] > 0.0f ? w[i] : 1e-30; /* held at all beats not held */
    }
}

/* Moves satellite `head`'s pages so that the device holds the protected pages, then
 * the pages holding the most attention of `set` (the pivot's top-k, weights w), within
 * its share; the rest go to the host. Fetches first (they arrive while decode goes on:
 * in flight until their copy completes), then evicts the lowest-ranked (least mass,
 * then the oldest). All or nothing per direction. */
static skv_status place_satellite(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t head, const uint32_t *set,
                                  const float *w, uint32_t set_n, int fetch)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, P = c->desc.page_tokens;
    const uint32_t li = (uint32_t)(((size_t)layer * H + head) * SKV_TIER_COUNT + SKV_TIER_F16);
    skvi_page_list *l = &s->lists[li];
    if (l->n == 0)
        return SKV_OK;
    const skv_allocator *a = c->ctx->alloc;
    double *hits = skvi_calloc(a, l->n, sizeof *hits);
    uint32_t *order = skvi_calloc(a, l->n, sizeof *order);
    uint32_t *lists = skvi_calloc(a, l->n, sizeof *lists), *entries = skvi_calloc(a, l->n, sizeof *entries);
    uint8_t *want = skvi_calloc(a, l->n, 1);
    skv_status st = SKV_OK;
    if (!hits || !order || !lists || !entries || !want) {
        st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
        goto done;
    }
    page_mass(c, x, layer, set, w, set_n, hits, l->n);
    /* the pages the device keeps: protected ones, then by hits (ties: newer first) */
    uint64_t share = x->share[(size_t)layer * H + head] / P, kept = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (protected_page(c, l, j)) {
            want[j] = 1;
            kept++;
        }
    uint32_t n_order = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (!want[j] && hits[j] > 0)
            order[n_order++] = j;
    for (uint32_t i = 1; i < n_order; i++) /* insertion sort: most mass, then newest */
        for (uint32_t m = i; m > 0; m--) {
            const uint32_t p = order[m - 1], q = order[m];
            if (hits[p] > hits[q] || (hits[p] == hits[q] && p > q))
                break;
            order[m - 1] = q, order[m] = p;
        }
    for (uint32_t i = 0; i < n_order && kept < share; i++, kept++)
        want[order[i]] = 1;
    /* pages already on the device and without hits stay while the share has room, the
     * newest first: nothing is moved for nothing */
    for (uint32_t j = l->n; j-- > 0 && kept < share;)
        if (!want[j] && !(l->ids[j] & SKVI_HOST_BIT)) {
            want[j] = 1;
            kept++;
        }
    uint32_t n = 0;
    if (fetch) {
        for (uint32_t j = 0; j < l->n; j++)
            if (want[j] && (l->ids[j] & SKVI_HOST_BIT))
                lists[n] = li, entries[n++] = j;
        if (n) {
            if (skvi_array_reserve(a, (void **)&x->fl, &x->cap_fl, x->n_fl, x->n_fl + n, sizeof *x->fl, 64) != 0) {
                st = skvi_fail(c->ctx->error, SKV_ERR_OUT_OF_MEMORY, "HeteroCache: out of memory");
                goto done;
            }
            cl_event last = NULL;
            st = skvi_move_entries(c, s, lists, entries, n, SKV_MEM_DEVICE, 0, &last, "HeteroCache retrieval");
            if (st != SKV_OK)
                goto done;
            for (uint32_t i = 0; i < n; i++) {
                clRetainEvent(last);
                x->fl[x->n_fl++] = (skvi_inflight){lists[i], entries[i], last};
            }
            clReleaseEvent(last);
            c->hstats.pages_fetched += n;
        }
    }
    n = 0;
    for (uint32_t j = 0; j < l->n; j++)
        if (!want[j] && !(l->ids[j] & SKVI_HOST_BIT) && !in_flight(x, li, j))
            lists[n] = li, entries[n++] = j;
    if (n) {
        st = skvi_stats_flush(c, s); /* pending statistics read device pages: before they move */
        if (st == SKV_OK)
            st = skvi_move_entries(c, s, lists, entries, n, SKV_MEM_HOST, 0, NULL, "HeteroCache eviction");
        if (st == SKV_OK)
            c->hstats.pages_evicted += n;
    }
done:
    skvi_free(a, hits);
    skvi_free(a, order);
    skvi_free(a, lists);
    skvi_free(a, entries);
    skvi_free(a, want);
    return st;
}

skv_status skvi_hetero_place(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads;
    skv_status st = SKV_OK;
    for (uint32_t h = 0; st == SKV_OK && h < H; h++) {
        if (category_of(x, c, layer, h) != SKV_HEAD_SATELLITE)
            continue;
        const size_t pv = (size_t)layer * H + x->pivot[(size_t)layer * H + h];
        st = place_satellite(c, s, layer, h, x->ref + pv * x->k, x->ref_w + pv * x->k, x->ref_n[pv], 0);
    }
    return st;
}

/* ---- the decode hooks ---- */

/* Whether this step of (s, layer) checks the layer's pivots: the first, then every
 * check_steps-th, when the layer has a pivot. */
static int check_step(const skv_cache *c, const skvi_hetero *x, uint32_t layer)
{
    if (x->steps[layer] % x->desc.check_steps != 0)
        return 0;
    for (uint32_t h = 0; h < c->desc.kv_heads; h++)
        if (category_of(x, c, layer, h) == SKV_HEAD_PIVOT)
            return 1;
    return 0;
}

int skvi_hetero_wants_logits(const skv_cache *c, const skvi_seq *s, uint32_t layer)
{
    return (s->calib && s->calib->steps[layer] < s->calib->desc.max_steps) ||
           (s->hetero && check_step(c, s->hetero, layer));
}

static void process_check(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    const uint32_t H = c->desc.kv_heads, K = x->k;
    for (uint32_t h = 0; h < H; h++) {
        const size_t i = (size_t)layer * H + h;
        if (x->cat[i] != SKV_HEAD_PIVOT)
            continue;
        c->hstats.checks++;
        const uint32_t *now = x->now + i * K;
        const uint32_t n = x->now_n[i];
        const int first = x->ref_n[i] == 0;
        const double overlap = first ? 1.0 : (double)skv_ref_set_overlap(now, n, x->ref + i * K, x->ref_n[i]) / (n ? n : 1);
        if (!first && overlap >= x->desc.tau_stable)
            continue;
        /* the first check places the satellites by the pivot's attention (until then by
         * recency); later ones that find a drift retrieve, when retrieval is on */
        int failed = 0;
        if (!first)
            c->hstats.drifts++;
        for (uint32_t g = 0; (first || x->desc.retrieval) && g < H; g++) {
            const size_t j = (size_t)layer * H + g;
            if (x->cat[j] != SKV_HEAD_SATELLITE || x->pivot[j] != h)
                continue;
            char saved[SKVI_ERROR_MAX];
            memcpy(saved, c->ctx->error, sizeof saved);
            if (place_satellite(c, s, layer, g, now, x->now_w + i * K, n, 1) == SKV_OK) {
                c->hstats.retrievals += !first;
            } else { /* the cache is as it was; decode goes on over the pages it has */
                c->hstats.retrievals_failed++;
                failed = 1;
                memcpy(c->ctx->error, saved, sizeof saved);
            }
        }
        if (!failed) { /* the reference resets; after a failure it stays, so the next check retries */
            memcpy(x->ref + i * K, now, n * sizeof *now);
            memcpy(x->ref_w + i * K, x->now_w + i * K, n * sizeof *x->now_w);
            x->ref_n[i] = n;
        }
    }
}

void skvi_hetero_before_decode(skv_cache *c, skvi_seq *s, uint32_t layer)
{
    skvi_hetero *x = s->hetero;
    if (!x)
        return;
    if (x->now_read[layer]) { /* the last check's sets: drift, retrieval */
        cl_int e = clWaitForEvents(1, &x->now_read[layer]);
        clReleaseEvent(x->now_read[layer]);
        x->now_read[layer] = NULL;
        if (e == CL_SUCCESS)
            process_check(c, s, layer);
    }
    /* arrived pages become readable; the rest this step skips */
    const uint32_t per_layer = c->desc.kv_heads * SKV_TIER_COUNT;
    size_t kept = 0;
    for (size_t i = 0; i < x->n_fl; i++) {
        cl_int status = CL_QUEUED;
        if (x->fl[i].done &&
            clGetEventInfo(x->fl[i].done, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL) != CL_SUCCESS)
            status = -1;
        if (status == CL_COMPLETE) {
            clReleaseEvent(x->fl[i].done);
            continue;
        }
        if (status < 0 && x->fl[i].done) { /* a failed copy: the page is never read */
            clReleaseEvent(x->fl[i].done);
            x->fl[i].done = NULL;
        }
        c->hstats.pages_skipped += x->fl[i].list / per_layer == layer;
        x->fl[kept++] = x->fl[i];
    }
    x->n_fl = kept;
}

static cl_mem grow(skv_cache *c, cl_mem *buf, size_t *have, size_t need, cl_int *e)
{
    if (*buf && *have >= need)
        return *buf;
    size_t bytes = *have * 2 > need ? *have * 2 : need;
    cl_mem m = clCreateBuffer(c->ctx->cl, CL_MEM_READ_WRITE, bytes, NULL, e);
    if (*e != CL_SUCCESS)
        return NULL;
    if (*buf)
        clReleaseMemObject(*buf); /* enqueued work keeps it alive */
    *buf = m;
    *have = bytes;
    return m;
}

/* This step's top-k sets of sequence b (every kv-head) into c->h_sets / c->h_counts. */
static skv_status step_topk(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe, void *arg,
                            uint32_t K, int weights)
{
    const uint32_t H = c->desc.kv_heads;
    const uint64_t cap = (uint64_t)s->next_pos[layer];
    if (cap == 0 || cap > 0x7FFFFFFFull)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG, "HeteroCache: positions up to %lld", (long long)cap);
    const uint32_t k_eff = (uint64_t)K < s->len[layer] ? K : (uint32_t)s->len[layer];
    cl_int e = CL_SUCCESS;
    cl_mem rows = grow(c, &c->h_rows, &c->h_rows_bytes, (size_t)H * cap * sizeof(float), &e);
    cl_mem sets = e == CL_SUCCESS ? grow(c, &c->h_sets, &c->h_sets_bytes, (size_t)H * K * sizeof(cl_uint), &e) : NULL;
    if (e == CL_SUCCESS)
        grow(c, &c->h_counts, &c->h_counts_bytes, (size_t)H * sizeof(cl_uint), &e);
    const float zero = 0.0f;
    if (e == CL_SUCCESS)
        e = clEnqueueFillBuffer(c->ctx->queue, rows, &zero, sizeof zero, 0, (size_t)H * cap * sizeof(float), 0, NULL,
                                NULL);
    if (e == CL_SUCCESS)
        e = observe(arg, b, rows, (cl_uint)cap);
    if (e != CL_SUCCESS)
        return skvi_cl_fail(c->ctx->error, e, "HeteroCache: attention rows");
    skv_status st =
        skvi_topk_enqueue(c->ctx, c->k_topk, rows, H, (uint32_t)cap, (uint32_t)cap, k_eff, sets, K, c->h_counts);
    if (st == SKV_OK && weights) {
        cl_mem wout = grow(c, &c->h_weights, &c->h_weights_bytes, (size_t)H * K * sizeof(float), &e);
        st = e == CL_SUCCESS ? skvi_topk_gather_enqueue(c->ctx, c->k_topk_gather, rows, H, (uint32_t)cap, sets, K,
                                                        c->h_counts, wout)
                             : skvi_cl_fail(c->ctx->error, e, "HeteroCache: clCreateBuffer");
    }
    return st;
}

skv_status skvi_hetero_after_decode(skv_cache *c, skvi_seq *s, uint32_t layer, uint32_t b, skvi_observe_fn observe,
                                    void *arg)
{
    const uint32_t H = c->desc.kv_heads;
    skvi_calib *k = s->calib;
    skvi_hetero *x = s->hetero;
    skv_status st = SKV_OK;
    cl_int e = CL_SUCCESS;
    if (k && k->steps[layer] >= k->desc.max_steps)
        k->extra[layer]++;
    else if (k) {
        const uint32_t K = k->desc.top_k, t = k->steps[layer];
        st = step_topk(c, s, layer, b, observe, arg, K, 0);
        if (st == SKV_OK)
            e = clEnqueueCopyBuffer(c->ctx->queue, c->h_sets, k->sets[layer], 0, (size_t)t * H * K * sizeof(cl_uint),
                                    (size_t)H * K * sizeof(cl_uint), 0, NULL, NULL);
        if (st == SKV_OK && e == CL_SUCCESS)
            e = clEnqueueCopyBuffer(c->ctx->queue, c->h_counts, k->counts[layer], 0, (size_t)t * H * sizeof(cl_uint),
                                    (size_t)H * sizeof(cl_uint), 0, NULL, NULL);
        if (st == SKV_OK && e != CL_SUCCESS)
            st = skvi_cl_fail(c->ctx->error, e, "HeteroCache calibration: clEnqueueCopyBuffer");
        if (st == SKV_OK)
            k->steps[layer]++;
    }
    if (st == SKV_OK && x) {
        if (check_step(c, x, layer)) {
            const uint32_t K = x->k;
            st = step_topk(c, s, layer, b, observe, arg, K, 1);
            if (st == SKV_OK)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_sets, CL_FALSE, 0, (size_t)H * K * sizeof(cl_uint),
                                        x->now + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_weights, CL_FALSE, 0, (size_t)H * K * sizeof(float),
                                        x->now_w + (size_t)layer * H * K, 0, NULL, NULL);
            if (st == SKV_OK && e == CL_SUCCESS)
                e = clEnqueueReadBuffer(c->ctx->queue, c->h_counts, CL_FALSE, 0, (size_t)H * sizeof(cl_uint),
                                        x->now_n + (size_t)layer * H, 0, NULL, &x->now_read[layer]);
            if (st == SKV_OK && e != CL_SUCCESS) {
                clFinish(c->ctx->queue); /* a read may have been enqueued into x->now */
                st = skvi_cl_fail(c->ctx->error, e, "HeteroCache: clEnqueueReadBuffer");
            }
            if (st == SKV_OK)
                clFlush(c->ctx->queue);
        }
        if (st == SKV_OK)
            x->steps[layer]++;
    }
    return st;
}

skv_status skv_cache_hetero_stats(const skv_cache *c, skv_hetero_stats *out)
{
    skvi_clear_error();
    if (!c || !out)
        return skvi_fail(c ? c->ctx->error : NULL, SKV_ERR_INVALID_ARG, "skv_cache_hetero_stats: cache or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(c->ctx->error, SKV_ERR_INVALID_ARG,
                         "skv_cache_hetero_stats: out->struct_size is %zu, expected %zu", out->struct_size, sizeof *out);
    *out = c->hstats;
    out->struct_size = sizeof *out;
    out->device_bytes = out->host_bytes = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        out->device_bytes += c->pools[t][SKV_MEM_DEVICE].used * c->pools[t][SKV_MEM_DEVICE].page_bytes;
        out->host_bytes += c->pools[t][SKV_MEM_HOST].used * c->pools[t][SKV_MEM_HOST].page_bytes;
    }
    return SKV_OK;
}

skv_status skvi_hetero_cache_init(skv_cache *c)
{
    /* the kernels are built on first use; a build list names them now */
    return c->ctx->build_list ? skvi_hetero_kernels(c) : SKV_OK;
}

void skvi_hetero_cache_release(skv_cache *c)
{
    cl_mem hb[] = {c->h_rows, c->h_sets, c->h_counts, c->h_weights};
    for (size_t i = 0; i < sizeof hb / sizeof hb[0]; i++)
        if (hb[i])
            clReleaseMemObject(hb[i]);
    if (c->k_topk)
        clReleaseKernel(c->k_topk);
    if (c->k_topk_gather)
        clReleaseKernel(c->k_topk_gather);
}

void skvi_hetero_seq_release(skv_cache *c, skvi_seq *s)
{
    skvi_hetero_release(c, s);
    skvi_calib_release(c, s);
}
