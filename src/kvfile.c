/* Key/value files (include/skv/skv.h, "key/value files"): a model's keys, values and
 * queries on disk. The header is checked whole (magic, version, every field's range, the
 * sizes it implies without overflow, the file's exact length) before anything is read by
 * it; tensors go straight into the caller's buffers, so nothing is allocated by a size the
 * file claims. The same parser serves files and bytes in memory (the fuzz harness). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "skv_internal.h"
#include "skv_ref.h"

#define KV_MAGIC 0x564B4B53u /* "SKKV" little-endian */
#define HEADER_WORDS 9
#define V2_WORDS 3 /* version 2: n_window, RoPE theta (float32 bits), RoPE layout */
#define MAX_LAYERS 1024u
#define MAX_KV_HEADS 1024u
#define MAX_Q_HEADS 4096u
#define MAX_HEAD_DIM 1024u
#define MAX_TOKENS (1u << 24)
#define MAX_QUERIES 1024u
#define MAX_WINDOW 4096u
#define CHUNK 4096 /* elements converted per step */

struct skv_kvfile {
    int fd;                   /* -1: in memory */
    const unsigned char *mem; /* in memory: the caller's bytes */
    skv_kvfile_info info;
    uint64_t header_bytes;
    char *name; /* the path, for messages ("memory" for bytes) */
};

static int little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static uint32_t load_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_u32(unsigned char *p, uint32_t x)
{
    p[0] = (unsigned char)x, p[1] = (unsigned char)(x >> 8), p[2] = (unsigned char)(x >> 16),
    p[3] = (unsigned char)(x >> 24);
}

/* a * b into *out; 0 when it overflows 64 bits. */
static int mul64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a && b > UINT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

static int add64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b > UINT64_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

void skv_kvfile_info_init(skv_kvfile_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
    info->version = 2;
    info->dtype = SKV_F32;
    info->rope.scaling = 1.0f;
}

static uint64_t elem_bytes(const skv_kvfile_info *i) { return i->dtype == SKV_F16 ? 2 : 4; }

/* Elements per row of a tensor, and its rows per layer. */
static uint64_t row_elems(const skv_kvfile_info *i, skv_kvfile_tensor t)
{
    return (uint64_t)(t <= SKV_KVFILE_VALUES ? i->kv_heads : i->q_heads) * i->head_dim;
}

static uint64_t tensor_rows(const skv_kvfile_info *i, skv_kvfile_tensor t)
{
    return t <= SKV_KVFILE_VALUES ? i->tokens : t == SKV_KVFILE_QUERIES ? i->n_queries : i->n_window;
}

/* Bytes of one layer (all four tensors) into *out; 0 on overflow. */
static int layer_bytes(const skv_kvfile_info *i, uint64_t *out)
{
    uint64_t kv, qw, total;
    return mul64((uint64_t)i->tokens * 2, row_elems(i, SKV_KVFILE_KEYS), &kv) &&
           mul64((uint64_t)i->n_queries + i->n_window, row_elems(i, SKV_KVFILE_QUERIES), &qw) &&
           add64(kv, qw, &total) && mul64(total, elem_bytes(i), out);
}

/* The fields of a header, checked in the order a reader meets them; SKV_OK and the file's
 * size, or SKV_ERR_INVALID_ARG with a message naming `fn` and `name`. */
static skv_status check_info(const char *fn, const char *name, const skv_kvfile_info *i, uint64_t *bytes)
{
    if (i->version != 1 && i->version != 2)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: version %u (this library reads 1 and 2)", fn, name,
                         i->version);
    if (i->version == 1 && i->n_window)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: version 1 has no prefill window (n_window %u)", fn,
                         name, i->n_window);
    if (i->n_window > MAX_WINDOW || i->n_window > i->tokens)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: n_window %u is above %u or above tokens (%u)", fn, name,
                         i->n_window, MAX_WINDOW, i->tokens);
    if (i->n_window && (!(i->rope.theta > 0.0f) || !isfinite(i->rope.theta)))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: RoPE theta %g must be finite and > 0 with a window", fn,
                         name, (double)i->rope.theta);
    if (i->rope.interleaved > 1)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: RoPE layout %u is not 0 (pairs i, i + d/2) or 1", fn,
                         name, i->rope.interleaved);
    if (i->dtype != SKV_F32 && i->dtype != SKV_F16)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: dtype %d must be 0 (float32) or 1 (fp16)", fn, name,
                         (int)i->dtype);
    if (!i->layers || i->layers > MAX_LAYERS || !i->kv_heads || i->kv_heads > MAX_KV_HEADS || !i->head_dim ||
        i->head_dim > MAX_HEAD_DIM || !i->tokens || i->tokens > MAX_TOKENS || !i->n_queries ||
        i->n_queries > MAX_QUERIES)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "%s: %s: layers %u, kv_heads %u, head_dim %u, tokens %u, n_queries %u: each must be at "
                         "least 1 and at most %u, %u, %u, %u, %u",
                         fn, name, i->layers, i->kv_heads, i->head_dim, i->tokens, i->n_queries, MAX_LAYERS,
                         MAX_KV_HEADS, MAX_HEAD_DIM, MAX_TOKENS, MAX_QUERIES);
    if (i->q_heads < i->kv_heads || i->q_heads % i->kv_heads || i->q_heads > MAX_Q_HEADS)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: q_heads %u is not a multiple of kv_heads (%u) up to %u",
                         fn, name, i->q_heads, i->kv_heads, MAX_Q_HEADS);
    uint64_t per_layer, all;
    const uint64_t header = 4u * (HEADER_WORDS + (i->version == 2 ? V2_WORDS : 0));
    if (!layer_bytes(i, &per_layer) || !mul64(per_layer, i->layers, &all) || !add64(all, header, bytes))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: the sizes overflow 64 bits", fn, name);
    return SKV_OK;
}

/* ---- reading ---------------------------------------------------------------------- */

/* n bytes at `offset`; 0, or -1 when the file ends early or a read fails. */
static int read_at(const skv_kvfile *f, uint64_t offset, void *buf, size_t n)
{
    if (f->fd < 0) {
        memcpy(buf, f->mem + offset, n); /* offset + n <= size: checked by the callers */
        return 0;
    }
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = pread(f->fd, p, n, (off_t)offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r, offset += (uint64_t)r, n -= (size_t)r;
    }
    return 0;
}

/* Parses the header from its first `got` bytes (up to 48) of a file of `size` bytes. */
static skv_status parse_header(skv_kvfile *f, const unsigned char *b, size_t got, uint64_t size, const char *fn)
{
    skv_kvfile_info *i = &f->info;
    skv_kvfile_info_init(i);
    if (got < 4 * HEADER_WORDS)
        return skvi_fail(NULL, SKV_ERR_IO, "%s: %s: %zu bytes, shorter than the 36-byte header", fn, f->name, got);
    uint32_t h[HEADER_WORDS + V2_WORDS] = {0}; /* version 1: the last three stay 0 */
    for (size_t w = 0; w < HEADER_WORDS; w++)
        h[w] = load_u32(b + 4 * w);
    if (h[0] != KV_MAGIC)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: not an skv key/value file (magic 0x%08x, not SKKV)", fn,
                         f->name, h[0]);
    if (h[1] != 1 && h[1] != 2)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: version %u (this library reads 1 and 2)", fn, f->name,
                         h[1]);
    if (h[1] == 2 && got < 4 * (HEADER_WORDS + V2_WORDS))
        return skvi_fail(NULL, SKV_ERR_IO, "%s: %s: %zu bytes, shorter than the 48-byte version-2 header", fn,
                         f->name, got);
    for (size_t w = HEADER_WORDS; h[1] == 2 && w < HEADER_WORDS + V2_WORDS; w++)
        h[w] = load_u32(b + 4 * w);
    if (h[2] > 1)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %s: dtype %u must be 0 (float32) or 1 (fp16)", fn, f->name,
                         h[2]);
    i->version = h[1];
    i->dtype = h[2] ? SKV_F16 : SKV_F32;
    i->layers = h[3], i->kv_heads = h[4], i->q_heads = h[5], i->head_dim = h[6], i->tokens = h[7];
    i->n_queries = h[8];
    i->n_window = h[9];
    memcpy(&i->rope.theta, &h[10], 4);
    i->rope.rotary_dims = h[6];
    i->rope.interleaved = h[11];
    f->header_bytes = 4u * (HEADER_WORDS + (h[1] == 2 ? V2_WORDS : 0));
    uint64_t want;
    skv_status st = check_info(fn, f->name, i, &want);
    if (st != SKV_OK)
        return st;
    if (size != want)
        return skvi_fail(NULL, SKV_ERR_IO, "%s: %s: %llu bytes, the header says %llu (truncated or extended)", fn,
                         f->name, (unsigned long long)size, (unsigned long long)want);
    i->file_bytes = size;
    return SKV_OK;
}

static skv_kvfile *kvfile_new(const char *name)
{
    skv_kvfile *f = calloc(1, sizeof *f);
    char *copy = malloc(strlen(name) + 1);
    if (!f || !copy) {
        free(f), free(copy);
        return NULL;
    }
    memcpy(copy, name, strlen(name) + 1);
    f->fd = -1;
    f->name = copy;
    return f;
}

void skv_kvfile_close(skv_kvfile *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->name);
    free(f);
}

skv_status skv_kvfile_open(const char *path, skv_kvfile **out)
{
    skvi_clear_error();
    if (!path || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_open: path or out is NULL");
    skv_kvfile *f = kvfile_new(path);
    if (!f)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_kvfile_open: out of memory");
    /* non-blocking, and only a regular file: a FIFO must not stall the open */
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (f->fd < 0) {
        const int e = errno;
        skv_kvfile_close(f);
        return skvi_fail(NULL, SKV_ERR_IO, "skv_kvfile_open: cannot open %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        skv_kvfile_close(f);
        return skvi_fail(NULL, SKV_ERR_IO, "skv_kvfile_open: %s is not a regular file", path);
    }
    unsigned char b[4 * (HEADER_WORDS + V2_WORDS)];
    const uint64_t size = (uint64_t)st.st_size;
    const size_t got = size < sizeof b ? (size_t)size : sizeof b;
    skv_status s = read_at(f, 0, b, got) != 0
                       ? skvi_fail(NULL, SKV_ERR_IO, "skv_kvfile_open: %s: cannot read the header", path)
                       : parse_header(f, b, got, size, "skv_kvfile_open");
    if (s != SKV_OK) {
        skv_kvfile_close(f);
        return s;
    }
    *out = f;
    return SKV_OK;
}

skv_status skv_kvfile_open_memory(const void *data, size_t size, skv_kvfile **out)
{
    skvi_clear_error();
    if ((!data && size) || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_open_memory: data or out is NULL");
    skv_kvfile *f = kvfile_new("memory");
    if (!f)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "skv_kvfile_open_memory: out of memory");
    f->mem = data;
    const size_t got = size < 4 * (HEADER_WORDS + V2_WORDS) ? size : 4 * (HEADER_WORDS + V2_WORDS);
    skv_status s = parse_header(f, f->mem, got, size, "skv_kvfile_open_memory");
    if (s != SKV_OK) {
        skv_kvfile_close(f);
        return s;
    }
    *out = f;
    return SKV_OK;
}

skv_status skv_kvfile_get_info(const skv_kvfile *f, skv_kvfile_info *out)
{
    skvi_clear_error();
    if (!f || !out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_get_info: file or out is NULL");
    if (out->struct_size != sizeof *out)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_get_info: out->struct_size is %zu, expected %zu",
                         out->struct_size, sizeof *out);
    *out = f->info;
    return SKV_OK;
}

/* Stored little-endian float32 or fp16 at `offset`, n elements, into dst. */
static int read_floats(const skv_kvfile *f, uint64_t offset, size_t n, float *dst)
{
    if (f->info.dtype == SKV_F32) {
        if (read_at(f, offset, dst, n * 4) != 0)
            return -1;
        if (!little_endian())
            for (size_t i = 0; i < n; i++) {
                uint32_t x;
                memcpy(&x, &dst[i], 4);
                x = load_u32((const unsigned char *)&x);
                memcpy(&dst[i], &x, 4);
            }
        return 0;
    }
    unsigned char buf[2 * CHUNK];
    for (size_t i = 0; i < n;) {
        const size_t c = n - i < CHUNK ? n - i : CHUNK;
        if (read_at(f, offset + 2 * (uint64_t)i, buf, 2 * c) != 0)
            return -1;
        for (size_t j = 0; j < c; j++)
            dst[i + j] = skv_ref_f16_to_f32((uint16_t)(buf[2 * j] | buf[2 * j + 1] << 8));
        i += c;
    }
    return 0;
}

skv_status skv_kvfile_read(skv_kvfile *f, skv_kvfile_tensor tensor, uint32_t layer, uint64_t row_begin,
                           uint64_t n_rows, float *out)
{
    skvi_clear_error();
    if (!f || (!out && n_rows))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_read: file or out is NULL");
    const skv_kvfile_info *i = &f->info;
    if ((unsigned)tensor > SKV_KVFILE_WINDOW)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_read: tensor %d", (int)tensor);
    const uint64_t rows = tensor_rows(i, tensor);
    if (layer >= i->layers || row_begin > rows || n_rows > rows - row_begin)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG,
                         "skv_kvfile_read: layer %u, rows %llu + %llu of a layer of %u with %llu rows", layer,
                         (unsigned long long)row_begin, (unsigned long long)n_rows, i->layers,
                         (unsigned long long)rows);
    if (n_rows == 0)
        return SKV_OK; /* out may be NULL */
    /* every product below is bounded by the file's size, checked at open */
    uint64_t per_layer = 0;
    layer_bytes(i, &per_layer);
    const uint64_t es = elem_bytes(i), re = row_elems(i, tensor);
    uint64_t offset = f->header_bytes + layer * per_layer;
    for (int t = 0; t < (int)tensor; t++)
        offset += tensor_rows(i, (skv_kvfile_tensor)t) * row_elems(i, (skv_kvfile_tensor)t) * es;
    offset += row_begin * re * es;
    const uint64_t n = n_rows * re;
    if (n > SIZE_MAX / 4)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_read: %llu floats do not fit in memory",
                         (unsigned long long)n);
    if (read_floats(f, offset, (size_t)n, out) != 0)
        return skvi_fail(NULL, SKV_ERR_IO, "skv_kvfile_read: %s: read error (did the file change?)", f->name);
    return SKV_OK;
}

/* ---- writing ---------------------------------------------------------------------- */

skv_status skv_kvfile_size(const skv_kvfile_info *info, uint64_t *bytes)
{
    skvi_clear_error();
    if (!info || !bytes)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_size: info or bytes is NULL");
    if (info->struct_size != sizeof *info)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "skv_kvfile_size: info->struct_size is %zu, expected %zu",
                         info->struct_size, sizeof *info);
    return check_info("skv_kvfile_size", "info", info, bytes);
}

/* Where a writer's bytes go: a buffer, or a file. */
typedef struct sink {
    unsigned char *mem;
    size_t pos;
    FILE *file;
    int bad;
} sink;

static void emit(sink *s, const void *p, size_t n)
{
    if (s->mem) {
        memcpy(s->mem + s->pos, p, n);
        s->pos += n;
    } else if (!s->bad && fwrite(p, 1, n, s->file) != n) {
        s->bad = 1;
    }
}

static void emit_floats(sink *s, skv_dtype dtype, const float *x, size_t n)
{
    unsigned char buf[4 * CHUNK];
    for (size_t i = 0; i < n;) {
        const size_t c = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < c; j++) {
            if (dtype == SKV_F16) {
                const uint16_t h = skv_ref_f32_to_f16(x[i + j]);
                buf[2 * j] = (unsigned char)h, buf[2 * j + 1] = (unsigned char)(h >> 8);
            } else {
                uint32_t u;
                memcpy(&u, &x[i + j], 4);
                store_u32(buf + 4 * j, u);
            }
        }
        emit(s, buf, c * (dtype == SKV_F16 ? 2 : 4));
        i += c;
    }
}

static skv_status check_write(const char *fn, const skv_kvfile_info *info, const float *k, const float *v,
                              const float *q, const float *w, uint64_t *bytes)
{
    if (!info || !k || !v || !q)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: info, k, v or q is NULL", fn);
    if (info->struct_size != sizeof *info)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: info->struct_size is %zu, expected %zu", fn,
                         info->struct_size, sizeof *info);
    skv_status st = check_info(fn, "info", info, bytes);
    if (st != SKV_OK)
        return st;
    if (info->n_window && !w)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: n_window is %u but w is NULL", fn, info->n_window);
    if (*bytes > SIZE_MAX)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: %llu bytes do not fit in memory", fn,
                         (unsigned long long)*bytes);
    return SKV_OK;
}

static void write_all(sink *s, const skv_kvfile_info *i, const float *k, const float *v, const float *q,
                      const float *w)
{
    unsigned char h[4 * (HEADER_WORDS + V2_WORDS)];
    uint32_t theta;
    memcpy(&theta, &i->rope.theta, 4);
    const uint32_t words[HEADER_WORDS + V2_WORDS] = {
        KV_MAGIC,     i->version, (uint32_t)i->dtype, i->layers,   i->kv_heads, i->q_heads,
        i->head_dim,  i->tokens,  i->n_queries,       i->n_window, theta,       i->rope.interleaved};
    const size_t n_words = HEADER_WORDS + (i->version == 2 ? V2_WORDS : 0);
    for (size_t j = 0; j < n_words; j++)
        store_u32(h + 4 * j, words[j]);
    emit(s, h, 4 * n_words);
    const size_t kv = (size_t)i->tokens * row_elems(i, SKV_KVFILE_KEYS);
    const size_t nq = (size_t)i->n_queries * row_elems(i, SKV_KVFILE_QUERIES);
    const size_t nw = (size_t)i->n_window * row_elems(i, SKV_KVFILE_WINDOW);
    for (size_t l = 0; l < i->layers; l++) {
        emit_floats(s, i->dtype, k + l * kv, kv);
        emit_floats(s, i->dtype, v + l * kv, kv);
        emit_floats(s, i->dtype, q + l * nq, nq);
        if (nw)
            emit_floats(s, i->dtype, w + l * nw, nw);
    }
}

skv_status skv_kvfile_write_memory(const skv_kvfile_info *info, const float *k, const float *v, const float *q,
                                   const float *w, void *buf, size_t capacity, size_t *size)
{
    skvi_clear_error();
    const char *fn = "skv_kvfile_write_memory";
    if (!size || (!buf && capacity))
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: size is NULL, or buf is NULL with a capacity", fn);
    uint64_t bytes;
    skv_status st;
    if (!buf)
        st = skv_kvfile_size(info, &bytes);
    else
        st = check_write(fn, info, k, v, q, w, &bytes);
    if (st != SKV_OK)
        return st;
    *size = (size_t)bytes;
    if (!buf)
        return SKV_OK;
    if (capacity < bytes)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: the file takes %llu bytes, capacity is %zu", fn,
                         (unsigned long long)bytes, capacity);
    sink s = {buf, 0, NULL, 0};
    write_all(&s, info, k, v, q, w);
    return SKV_OK;
}

skv_status skv_kvfile_write(const char *path, const skv_kvfile_info *info, const float *k, const float *v,
                            const float *q, const float *w)
{
    skvi_clear_error();
    const char *fn = "skv_kvfile_write";
    if (!path)
        return skvi_fail(NULL, SKV_ERR_INVALID_ARG, "%s: path is NULL", fn);
    uint64_t bytes;
    skv_status st = check_write(fn, info, k, v, q, w, &bytes);
    if (st != SKV_OK)
        return st;
    const size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return skvi_fail(NULL, SKV_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    sink s = {NULL, 0, fopen(tmp, "wb"), 0};
    if (!s.file) {
        const int e = errno;
        free(tmp);
        return skvi_fail(NULL, SKV_ERR_IO, "%s: cannot create %s.tmp.*: %s", fn, path, strerror(e));
    }
    write_all(&s, info, k, v, q, w);
    int bad = s.bad;
    bad |= fclose(s.file) != 0;
    if (!bad && rename(tmp, path) != 0)
        bad = 1;
    if (bad) {
        const int e = errno;
        remove(tmp);
        free(tmp);
        return skvi_fail(NULL, SKV_ERR_IO, "%s: writing %s failed: %s", fn, path, strerror(e));
    }
    free(tmp);
    return SKV_OK;
}
