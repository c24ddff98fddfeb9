/* The GGUF reader (gguf.h): a bounds-checked cursor over the file's bytes, an arena for
 * everything parsed (freed at once by gguf_close), dequantisation, and a small writer.
 * Layouts follow ggml: Q8_0 = fp16 d + 32 int8 (x = d*q); Q4_1 = fp16 d, fp16 m, 16 bytes
 * whose low nibbles are values 0..15 and high nibbles values 16..31 (x = d*q + m). */
#define _POSIX_C_SOURCE 200809L
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_COUNT (UINT64_C(1) << 24) /* keys, tensors: far above any model */
#define GGUF_MAX_DEPTH 8                   /* arrays of arrays */

static _Thread_local char last_error[256];

const char *gguf_last_error(void) { return last_error; }

static gguf_status fail(gguf_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *gguf_status_str(gguf_status st)
{
    switch (st) {
    case GGUF_OK: return "ok";
    case GGUF_ERR_IO: return "i/o error";
    case GGUF_ERR_FORMAT: return "malformed file";
    case GGUF_ERR_TRUNCATED: return "truncated file";
    case GGUF_ERR_NOMEM: return "out of memory";
    case GGUF_ERR_NOT_FOUND: return "not found";
    case GGUF_ERR_TYPE: return "wrong type";
    case GGUF_ERR_UNSUPPORTED: return "unsupported";
    case GGUF_ERR_INVALID_ARG: return "invalid argument";
    }
    return "unknown status";
}

static const char *const vtype_names[GGUF_VTYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64"};
static const uint8_t vtype_sizes[GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_vtype_name(gguf_vtype t) { return (unsigned)t < GGUF_VTYPE_COUNT ? vtype_names[t] : "?"; }

typedef struct {
    uint32_t type, values, bytes;
    const char *name;
} ttype_info;
static const ttype_info ttypes[] = {
    {GGUF_F32, 1, 4, "F32"},       {GGUF_F16, 1, 2, "F16"},       {GGUF_Q4_0, 32, 18, "Q4_0"},
    {GGUF_Q4_1, 32, 20, "Q4_1"},   {GGUF_Q5_0, 32, 22, "Q5_0"},   {GGUF_Q5_1, 32, 24, "Q5_1"},
    {GGUF_Q8_0, 32, 34, "Q8_0"},   {GGUF_Q8_1, 32, 36, "Q8_1"},   {GGUF_Q2_K, 256, 84, "Q2_K"},
    {GGUF_Q3_K, 256, 110, "Q3_K"}, {GGUF_Q4_K, 256, 144, "Q4_K"}, {GGUF_Q5_K, 256, 176, "Q5_K"},
    {GGUF_Q6_K, 256, 210, "Q6_K"}, {GGUF_Q8_K, 256, 292, "Q8_K"}, {GGUF_I8, 1, 1, "I8"},
    {GGUF_I16, 1, 2, "I16"},       {GGUF_I32, 1, 4, "I32"},       {GGUF_I64, 1, 8, "I64"},
    {GGUF_F64, 1, 8, "F64"},       {GGUF_BF16, 1, 2, "BF16"},
};

static const ttype_info *ttype_find(uint32_t type)
{
    for (size_t i = 0; i < sizeof ttypes / sizeof ttypes[0]; i++)
        if (ttypes[i].type == type)
            return &ttypes[i];
    return NULL;
}

const char *gguf_ttype_name(uint32_t type)
{
    const ttype_info *t = ttype_find(type);
    return t ? t->name : NULL;
}

bool gguf_ttype_block(uint32_t type, uint32_t *block_values, uint32_t *block_bytes)
{
    const ttype_info *t = ttype_find(type);
    if (!t)
        return false;
    if (block_values)
        *block_values = t->values;
    if (block_bytes)
        *block_bytes = t->bytes;
    return true;
}

/* ---- arena: every parsed thing, freed at once */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[]; /* cap bytes */
} arena_block;

static void *arena_alloc(arena_block **head, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    arena_block *b = *head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->next = *head, b->used = 0, b->cap = cap;
        *head = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    return p;
}

struct gguf_file {
    const uint8_t *data;
    size_t size;
    uint8_t *owned; /* gguf_open_file's buffer */
    uint32_t version, alignment;
    uint64_t data_offset;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    arena_block *arena;
};

/* ---- the cursor */
typedef struct {
    const uint8_t *p;
    size_t size, pos;
    gguf_file *f;
    char what[96]; /* what is being read, for messages */
} cursor;

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static gguf_status need(cursor *c, uint64_t n)
{
    if (n > c->size - c->pos)
        return fail(GGUF_ERR_TRUNCATED, "truncated: %s needs %llu bytes at offset %zu, %zu remain", c->what,
                    (unsigned long long)n, c->pos, c->size - c->pos);
    return GGUF_OK;
}

static gguf_status rd(cursor *c, int n, uint64_t *v)
{
    gguf_status st = need(c, (uint64_t)n);
    if (st)
        return st;
    *v = le(c->p + c->pos, n);
    c->pos += (size_t)n;
    return GGUF_OK;
}

static gguf_status rd_u32(cursor *c, uint32_t *v)
{
    uint64_t x;
    gguf_status st = rd(c, 4, &x);
    *v = (uint32_t)x;
    return st;
}

/* A string: uint64 length (checked against what remains) + bytes, copied with a NUL. */
static gguf_status rd_str(cursor *c, const char **s, uint64_t *len)
{
    uint64_t n;
    gguf_status st = rd(c, 8, &n);
    if (st || (st = need(c, n)))
        return st;
    char *copy = arena_alloc(&c->f->arena, (size_t)n + 1);
    if (!copy)
        return fail(GGUF_ERR_NOMEM, "out of memory for a string of %llu bytes", (unsigned long long)n);
    memcpy(copy, c->p + c->pos, (size_t)n);
    copy[n] = 0;
    c->pos += (size_t)n;
    *s = copy;
    if (len)
        *len = n;
    return GGUF_OK;
}

/* The fewest bytes an element of a type takes (counts are checked against it). */
static uint64_t min_size(gguf_vtype t)
{
    return t == GGUF_STRING ? 8 : t == GGUF_ARRAY ? 12 : vtype_sizes[t];
}

static gguf_status rd_value(cursor *c, gguf_vtype type, gguf_value *out, int depth);

static gguf_status rd_array(cursor *c, gguf_value *out, int depth)
{
    uint32_t et;
    uint64_t n;
    gguf_status st = rd_u32(c, &et);
    if (st || (st = rd(c, 8, &n)))
        return st;
    if (et >= GGUF_VTYPE_COUNT)
        return fail(GGUF_ERR_FORMAT, "%s: unknown array element type %u", c->what, et);
    if (et == GGUF_ARRAY && depth >= GGUF_MAX_DEPTH)
        return fail(GGUF_ERR_FORMAT, "%s: arrays nested deeper than %d", c->what, GGUF_MAX_DEPTH);
    const uint64_t remain = c->size - c->pos, ms = min_size((gguf_vtype)et);
    if (n > remain / ms)
        return fail(GGUF_ERR_TRUNCATED, "truncated: %s declares %llu %s elements, only %llu bytes remain", c->what,
                    (unsigned long long)n, vtype_names[et], (unsigned long long)remain);
    out->v.arr.elem = (gguf_vtype)et;
    out->v.arr.n = n;
    if (et != GGUF_STRING && et != GGUF_ARRAY) {
        out->v.arr.raw = c->p + c->pos;
        c->pos += (size_t)(n * ms);
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (out->v.arr.raw[i] > 1)
                    return fail(GGUF_ERR_FORMAT, "%s: bool element %llu is %u", c->what, (unsigned long long)i,
                                out->v.arr.raw[i]);
        return GGUF_OK;
    }
    if (et == GGUF_STRING) {
        const char **strs = arena_alloc(&c->f->arena, (size_t)n * sizeof *strs + 1);
        uint64_t *lens = arena_alloc(&c->f->arena, (size_t)n * sizeof *lens + 1);
        if (!strs || !lens)
            return fail(GGUF_ERR_NOMEM, "out of memory for %llu strings", (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++)
            if ((st = rd_str(c, &strs[i], &lens[i])))
                return st;
        out->v.arr.strs = strs, out->v.arr.lens = lens;
        return GGUF_OK;
    }
    gguf_value *items = arena_alloc(&c->f->arena, (size_t)n * sizeof *items + 1);
    if (!items)
        return fail(GGUF_ERR_NOMEM, "out of memory for %llu arrays", (unsigned long long)n);
    memset(items, 0, (size_t)n * sizeof *items);
    for (uint64_t i = 0; i < n; i++)
        if ((st = rd_value(c, GGUF_ARRAY, &items[i], depth + 1)))
            return st;
    out->v.arr.items = items;
    return GGUF_OK;
}

static gguf_status rd_value(cursor *c, gguf_vtype type, gguf_value *out, int depth)
{
    out->type = type;
    uint64_t x;
    gguf_status st;
    switch (type) {
    case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64:
        if ((st = rd(c, vtype_sizes[type], &x)))
            return st;
        out->v.u64 = x;
        return GGUF_OK;
    case GGUF_INT8: case GGUF_INT16: case GGUF_INT32: case GGUF_INT64: {
        const int n = vtype_sizes[type];
        if ((st = rd(c, n, &x)))
            return st;
        if (n < 8 && (x >> (8 * n - 1)) & 1) /* sign-extend */
            x |= ~UINT64_C(0) << (8 * n);
        memcpy(&out->v.i64, &x, 8);
        return GGUF_OK;
    }
    case GGUF_FLOAT32: {
        if ((st = rd(c, 4, &x)))
            return st;
        uint32_t b = (uint32_t)x;
        float f;
        memcpy(&f, &b, 4);
        out->v.f64 = f;
        return GGUF_OK;
    }
    case GGUF_FLOAT64:
        if ((st = rd(c, 8, &x)))
            return st;
        memcpy(&out->v.f64, &x, 8);
        return GGUF_OK;
    case GGUF_BOOL:
        if ((st = rd(c, 1, &x)))
            return st;
        if (x > 1)
            return fail(GGUF_ERR_FORMAT, "%s: bool value %u", c->what, (unsigned)x);
        out->v.b = x != 0;
        return GGUF_OK;
    case GGUF_STRING:
        return rd_str(c, &out->v.str.s, &out->v.str.len);
    case GGUF_ARRAY:
        return rd_array(c, out, depth);
    }
    return fail(GGUF_ERR_FORMAT, "%s: unknown value type %u", c->what, (unsigned)type);
}

static gguf_status parse(gguf_file *f)
{
    cursor c = {.p = f->data, .size = f->size, .f = f};
    gguf_status st;
    snprintf(c.what, sizeof c.what, "the magic");
    if ((st = need(&c, 4)))
        return st;
    if (memcmp(f->data, "GGUF", 4) != 0)
        return fail(GGUF_ERR_FORMAT, "not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")", f->data[0],
                    f->data[1], f->data[2], f->data[3]);
    c.pos = 4;
    snprintf(c.what, sizeof c.what, "the version");
    if ((st = rd_u32(&c, &f->version)))
        return st;
    if (f->version != 2 && f->version != 3)
        return fail(GGUF_ERR_FORMAT, "GGUF version %u unsupported (2 and 3 are read%s)", f->version,
                    f->version > 0xffff ? "; a big-endian file?" : "");
    snprintf(c.what, sizeof c.what, "the header's counts");
    if ((st = rd(&c, 8, &f->n_tensors)) || (st = rd(&c, 8, &f->n_kv)))
        return st;
    const uint64_t remain = c.size - c.pos;
    /* a key/value takes at least 8+1+4 bytes (a one-byte key name), a tensor 8+4+4+8 */
    if (f->n_kv > GGUF_MAX_COUNT || f->n_kv > remain / 13)
        return fail(GGUF_ERR_FORMAT, "%llu metadata keys declared; %llu bytes remain", (unsigned long long)f->n_kv,
                    (unsigned long long)remain);
    if (f->n_tensors > GGUF_MAX_COUNT || f->n_tensors > remain / 24)
        return fail(GGUF_ERR_FORMAT, "%llu tensors declared; %llu bytes remain", (unsigned long long)f->n_tensors,
                    (unsigned long long)remain);
    f->kv = arena_alloc(&f->arena, (size_t)f->n_kv * sizeof *f->kv + 1);
    f->tensors = arena_alloc(&f->arena, (size_t)f->n_tensors * sizeof *f->tensors + 1);
    if (!f->kv || !f->tensors)
        return fail(GGUF_ERR_NOMEM, "out of memory for the tables");
    memset(f->kv, 0, (size_t)f->n_kv * sizeof *f->kv);
    memset(f->tensors, 0, (size_t)f->n_tensors * sizeof *f->tensors);

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        snprintf(c.what, sizeof c.what, "key %llu's name", (unsigned long long)i);
        if ((st = rd_str(&c, &kv->key, NULL)))
            return st;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(f->kv[j].key, kv->key) == 0)
                return fail(GGUF_ERR_FORMAT, "duplicate key \"%.64s\"", kv->key);
        snprintf(c.what, sizeof c.what, "key \"%.64s\"", kv->key);
        uint32_t t;
        if ((st = rd_u32(&c, &t)))
            return st;
        if (t >= GGUF_VTYPE_COUNT)
            return fail(GGUF_ERR_FORMAT, "%s: unknown value type %u", c.what, t);
        if ((st = rd_value(&c, (gguf_vtype)t, &kv->value, 0)))
            return st;
        if (strcmp(kv->key, "general.alignment") == 0) {
            if (t != GGUF_UINT32)
                return fail(GGUF_ERR_FORMAT, "general.alignment is %s, expected uint32", vtype_names[t]);
            const uint64_t a = kv->value.v.u64;
            if (a == 0 || (a & (a - 1)) != 0)
                return fail(GGUF_ERR_FORMAT, "general.alignment %llu is not a power of two", (unsigned long long)a);
            f->alignment = (uint32_t)a;
        }
    }

    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        snprintf(c.what, sizeof c.what, "tensor %llu's name", (unsigned long long)i);
        if ((st = rd_str(&c, &t->name, NULL)))
            return st;
        for (uint64_t j = 0; j < i; j++)
            if (strcmp(f->tensors[j].name, t->name) == 0)
                return fail(GGUF_ERR_FORMAT, "duplicate tensor \"%.64s\"", t->name);
        snprintf(c.what, sizeof c.what, "tensor \"%.64s\"", t->name);
        if ((st = rd_u32(&c, &t->n_dims)))
            return st;
        if (t->n_dims > GGUF_MAX_DIMS)
            return fail(GGUF_ERR_FORMAT, "%s has %u dimensions (at most %d)", c.what, t->n_dims, GGUF_MAX_DIMS);
        uint64_t n = 1;
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d < t->n_dims && (st = rd(&c, 8, &t->ne[d])))
                return st;
            if (t->ne[d] > (uint64_t)INT64_MAX || (t->ne[d] && n > (uint64_t)INT64_MAX / t->ne[d]))
                return fail(GGUF_ERR_FORMAT, "%s: dimensions overflow", c.what);
            n *= t->ne[d];
        }
        t->n_elements = n;
        if ((st = rd_u32(&c, &t->type)) || (st = rd(&c, 8, &t->offset)))
            return st;
        if (t->offset % f->alignment)
            return fail(GGUF_ERR_FORMAT, "%s: offset %llu is not a multiple of the alignment %u", c.what,
                        (unsigned long long)t->offset, f->alignment);
        const ttype_info *ti = ttype_find(t->type);
        if (ti) {
            if (t->ne[0] % ti->values)
                return fail(GGUF_ERR_FORMAT, "%s: row of %llu values is not whole %s blocks of %u", c.what,
                            (unsigned long long)t->ne[0], ti->name, ti->values);
            t->n_bytes = n / ti->values * ti->bytes; /* n/values*bytes < 2^63/1*292/32... checked below */
            if (n / ti->values > UINT64_MAX / ti->bytes)
                return fail(GGUF_ERR_FORMAT, "%s: size overflows", c.what);
        }
    }
    snprintf(c.what, sizeof c.what, "the data section");
    f->data_offset = (c.pos + (uint64_t)f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors == 0)
        return GGUF_OK;
    if (f->data_offset > f->size)
        return fail(GGUF_ERR_TRUNCATED, "truncated: the data section starts at %llu, the file has %zu bytes",
                    (unsigned long long)f->data_offset, f->size);
    const uint64_t data_size = f->size - f->data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > data_size || t->n_bytes > data_size - t->offset)
            return fail(GGUF_ERR_TRUNCATED, "truncated: tensor \"%.64s\" (%llu bytes at %llu) ends past the data "
                        "section's %llu bytes", t->name, (unsigned long long)t->n_bytes,
                        (unsigned long long)t->offset, (unsigned long long)data_size);
        if (ttype_find(t->type))
            t->data = f->data + f->data_offset + t->offset;
    }
    return GGUF_OK;
}

void gguf_close(gguf_file *f)
{
    if (!f)
        return;
    for (arena_block *b = f->arena, *next; b; b = next)
        next = b->next, free(b);
    free(f->owned);
    free(f);
}

gguf_status gguf_open_memory(const void *data, size_t size, gguf_file **out)
{
    if (!out || (!data && size))
        return fail(GGUF_ERR_INVALID_ARG, "gguf_open_memory: NULL argument");
    *out = NULL;
    gguf_file *f = calloc(1, sizeof *f);
    if (!f)
        return fail(GGUF_ERR_NOMEM, "out of memory");
    static const uint8_t empty[1];
    f->data = data ? data : empty;
    f->size = size;
    gguf_status st = parse(f);
    if (st) {
        gguf_close(f);
        return st;
    }
    last_error[0] = 0;
    *out = f;
    return GGUF_OK;
}

gguf_status gguf_open_file(const char *path, gguf_file **out)
{
    if (!path || !out)
        return fail(GGUF_ERR_INVALID_ARG, "gguf_open_file: NULL argument");
    *out = NULL;
    /* without blocking (a FIFO would wait for a writer), and only a regular file */
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fail(GGUF_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 0 || (uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return fail(GGUF_ERR_IO, "%s: not a regular file", path);
    }
    const size_t len = (size_t)sb.st_size;
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        close(fd);
        return fail(GGUF_ERR_NOMEM, "%s: out of memory for %zu bytes", path, len);
    }
    size_t got = 0;
    while (got < len) {
        const ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (got != len) {
        free(buf);
        return fail(GGUF_ERR_IO, "%s: read %zu of %zu bytes", path, got, len);
    }
    gguf_status st = gguf_open_memory(buf, len, out);
    if (st) {
        free(buf);
        char msg[sizeof last_error];
        snprintf(msg, sizeof msg, "%s", last_error);
        return fail(st, "%s: %s", path, msg);
    }
    (*out)->owned = buf;
    return GGUF_OK;
}

uint32_t gguf_version(const gguf_file *f) { return f ? f->version : 0; }
uint32_t gguf_alignment(const gguf_file *f) { return f ? f->alignment : 0; }
uint64_t gguf_data_offset(const gguf_file *f) { return f ? f->data_offset : 0; }
size_t gguf_file_size(const gguf_file *f) { return f ? f->size : 0; }
uint64_t gguf_n_kv(const gguf_file *f) { return f ? f->n_kv : 0; }
uint64_t gguf_n_tensors(const gguf_file *f) { return f ? f->n_tensors : 0; }

const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i) { return f && i < f->n_kv ? &f->kv[i] : NULL; }

const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i)
{
    return f && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const gguf_value *gguf_find(const gguf_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, key) == 0)
            return &f->kv[i].value;
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

static gguf_status lookup(const gguf_file *f, const char *key, const gguf_value **v)
{
    if (!f || !key)
        return fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    *v = gguf_find(f, key);
    if (!*v)
        return fail(GGUF_ERR_NOT_FOUND, "no key \"%.64s\"", key);
    return GGUF_OK;
}

static bool is_unsigned(gguf_vtype t)
{
    return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64;
}
static bool is_signed(gguf_vtype t)
{
    return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64;
}

gguf_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !out)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (is_signed(v->type))
        *out = v->v.i64;
    else if (is_unsigned(v->type) && v->v.u64 <= (uint64_t)INT64_MAX)
        *out = (int64_t)v->v.u64;
    else
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %s, not an int64", key, gguf_vtype_name(v->type));
    return GGUF_OK;
}

gguf_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    int64_t x = 0;
    gguf_status st = gguf_get_i64(f, key, &x);
    if (st || !out)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (x < 0 || x > (int64_t)UINT32_MAX)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %lld, out of uint32's range", key, (long long)x);
    *out = (uint32_t)x;
    return GGUF_OK;
}

gguf_status gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !out)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (v->type != GGUF_FLOAT32 && v->type != GGUF_FLOAT64)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %s, not a float", key, gguf_vtype_name(v->type));
    *out = (float)v->v.f64;
    return GGUF_OK;
}

gguf_status gguf_get_bool(const gguf_file *f, const char *key, bool *out)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !out)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (v->type != GGUF_BOOL)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %s, not a bool", key, gguf_vtype_name(v->type));
    *out = v->v.b;
    return GGUF_OK;
}

gguf_status gguf_get_string(const gguf_file *f, const char *key, const char **out)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !out)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (v->type != GGUF_STRING)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %s, not a string", key, gguf_vtype_name(v->type));
    *out = v->v.str.s;
    return GGUF_OK;
}

gguf_status gguf_get_strings(const gguf_file *f, const char *key, const char *const **strs, uint64_t *n)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !strs || !n)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (v->type != GGUF_ARRAY || v->v.arr.elem != GGUF_STRING)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is not an array of strings", key);
    *strs = v->v.arr.strs;
    *n = v->v.arr.n;
    return GGUF_OK;
}

gguf_status gguf_array_int(const gguf_value *a, uint64_t i, int64_t *out)
{
    if (!a || !out || a->type != GGUF_ARRAY || i >= a->v.arr.n)
        return fail(GGUF_ERR_INVALID_ARG, "not an array, or index out of range");
    const gguf_vtype t = a->v.arr.elem;
    if (!is_signed(t) && !is_unsigned(t) && t != GGUF_BOOL)
        return fail(GGUF_ERR_TYPE, "an array of %s, not of integers", gguf_vtype_name(t));
    const int n = vtype_sizes[t];
    uint64_t x = le(a->v.arr.raw + i * (uint64_t)n, n);
    if (is_signed(t)) {
        if (n < 8 && (x >> (8 * n - 1)) & 1)
            x |= ~UINT64_C(0) << (8 * n);
        memcpy(out, &x, 8);
    } else if (x > (uint64_t)INT64_MAX) {
        return fail(GGUF_ERR_TYPE, "element %llu (%llu) exceeds int64", (unsigned long long)i, (unsigned long long)x);
    } else {
        *out = (int64_t)x;
    }
    return GGUF_OK;
}

gguf_status gguf_array_float(const gguf_value *a, uint64_t i, double *out)
{
    if (!a || !out || a->type != GGUF_ARRAY || i >= a->v.arr.n)
        return fail(GGUF_ERR_INVALID_ARG, "not an array, or index out of range");
    if (a->v.arr.elem == GGUF_FLOAT32) {
        uint32_t b = (uint32_t)le(a->v.arr.raw + 4 * i, 4);
        float x;
        memcpy(&x, &b, 4);
        *out = x;
    } else if (a->v.arr.elem == GGUF_FLOAT64) {
        uint64_t b = le(a->v.arr.raw + 8 * i, 8);
        memcpy(out, &b, 8);
    } else {
        return fail(GGUF_ERR_TYPE, "an array of %s, not of floats", gguf_vtype_name(a->v.arr.elem));
    }
    return GGUF_OK;
}

gguf_status gguf_get_i32s(const gguf_file *f, const char *key, int32_t *out, uint64_t cap, uint64_t *n)
{
    const gguf_value *v;
    gguf_status st = lookup(f, key, &v);
    if (st || !n)
        return st ? st : fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (v->type != GGUF_ARRAY)
        return fail(GGUF_ERR_TYPE, "\"%.64s\" is %s, not an array", key, gguf_vtype_name(v->type));
    *n = v->v.arr.n;
    if (cap < v->v.arr.n || (!out && v->v.arr.n))
        return fail(GGUF_ERR_INVALID_ARG, "\"%.64s\" has %llu elements, room for %llu", key,
                    (unsigned long long)v->v.arr.n, (unsigned long long)cap);
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
        int64_t x = 0;
        if ((st = gguf_array_int(v, i, &x)))
            return st;
        if (x < INT32_MIN || x > INT32_MAX)
            return fail(GGUF_ERR_TYPE, "\"%.64s\"[%llu] = %lld is out of int32's range", key, (unsigned long long)i,
                        (long long)x);
        out[i] = (int32_t)x;
    }
    return GGUF_OK;
}

/* ---- fp16 and dequantisation */
float gguf_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float x;
    if (e == 0)
        x = ldexpf((float)m, -24); /* zero and subnormals */
    else if (e == 31) {
        uint32_t b = 0x7f800000u | m << 13;
        memcpy(&x, &b, 4);
    } else
        x = ldexpf((float)(m | 0x400), (int)e - 25);
    return sign ? -x : x;
}

uint16_t gguf_f32_to_f16(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    const uint16_t sign = (uint16_t)(b >> 16 & 0x8000);
    const uint32_t abs = b & 0x7fffffff;
    if (abs >= 0x7f800000) /* inf, NaN */
        return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0));
    if (abs >= 0x477ff000) /* rounds to >= 65520: inf */
        return (uint16_t)(sign | 0x7c00);
    if (abs < 0x38800000) { /* below the smallest normal: a multiple of 2^-24, rounded */
        float a;
        memcpy(&a, &abs, 4);
        return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f)); /* lrintf: to nearest even */
    }
    const uint32_t e = (abs >> 23) - 112, m = abs & 0x7fffff;
    uint32_t h = e << 10 | m >> 13;
    const uint32_t rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

gguf_status gguf_dequantize(const gguf_tensor *t, float *out, uint64_t cap)
{
    if (!t || (!out && t->n_elements))
        return fail(GGUF_ERR_INVALID_ARG, "NULL argument");
    if (cap < t->n_elements)
        return fail(GGUF_ERR_INVALID_ARG, "tensor \"%.64s\" has %llu values, room for %llu", t->name,
                    (unsigned long long)t->n_elements, (unsigned long long)cap);
    const uint8_t *p = t->data;
    const uint64_t n = t->n_elements;
    if (!p && n)
        return fail(GGUF_ERR_UNSUPPORTED, "tensor \"%.64s\" has type %u, unknown to this reader", t->name, t->type);
    switch (t->type) {
    case GGUF_F32:
        for (uint64_t i = 0; i < n; i++) {
            const uint32_t b = (uint32_t)le(p + 4 * i, 4);
            memcpy(&out[i], &b, 4);
        }
        return GGUF_OK;
    case GGUF_F16:
        for (uint64_t i = 0; i < n; i++)
            out[i] = gguf_f16_to_f32((uint16_t)le(p + 2 * i, 2));
        return GGUF_OK;
    case GGUF_Q8_0:
        for (uint64_t b = 0; b < n / 32; b++, p += 34) {
            const float d = gguf_f16_to_f32((uint16_t)le(p, 2));
            for (int j = 0; j < 32; j++)
                out[b * 32 + j] = d * (float)(int8_t)p[2 + j];
        }
        return GGUF_OK;
    case GGUF_Q4_1:
        for (uint64_t b = 0; b < n / 32; b++, p += 20) {
            const float d = gguf_f16_to_f32((uint16_t)le(p, 2)), m = gguf_f16_to_f32((uint16_t)le(p + 2, 2));
            for (int j = 0; j < 16; j++) {
                out[b * 32 + j] = d * (float)(p[4 + j] & 0xf) + m;
                out[b * 32 + j + 16] = d * (float)(p[4 + j] >> 4) + m;
            }
        }
        return GGUF_OK;
    default:
        return fail(GGUF_ERR_UNSUPPORTED, "tensor \"%.64s\": dequantising %s is not supported (F32, F16, Q8_0, Q4_1)",
                    t->name, gguf_ttype_name(t->type));
    }
}

/* ---- the writer */
void gguf_w_bytes(gguf_writer *w, const void *p, size_t n)
{
    if (w->failed)
        return;
    if (w->cap - w->n < n) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->n < n)
            cap *= 2;
        uint8_t *q = realloc(w->p, cap);
        if (!q) {
            w->failed = true;
            return;
        }
        w->p = q, w->cap = cap;
    }
    if (n)
        memcpy(w->p + w->n, p, n);
    w->n += n;
}

static void w_le(gguf_writer *w, uint64_t v, int n)
{
    uint8_t b[8];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    gguf_w_bytes(w, b, (size_t)n);
}
void gguf_w_u8(gguf_writer *w, uint8_t v) { w_le(w, v, 1); }
void gguf_w_u16(gguf_writer *w, uint16_t v) { w_le(w, v, 2); }
void gguf_w_u32(gguf_writer *w, uint32_t v) { w_le(w, v, 4); }
void gguf_w_u64(gguf_writer *w, uint64_t v) { w_le(w, v, 8); }
void gguf_w_f32(gguf_writer *w, float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    w_le(w, b, 4);
}
void gguf_w_f64(gguf_writer *w, double v)
{
    uint64_t b;
    memcpy(&b, &v, 8);
    w_le(w, b, 8);
}
void gguf_w_str(gguf_writer *w, const char *s)
{
    const size_t n = strlen(s);
    gguf_w_u64(w, n);
    gguf_w_bytes(w, s, n);
}
void gguf_w_header(gguf_writer *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gguf_w_bytes(w, "GGUF", 4);
    gguf_w_u32(w, version);
    gguf_w_u64(w, n_tensors);
    gguf_w_u64(w, n_kv);
}
void gguf_w_key(gguf_writer *w, const char *key, gguf_vtype type)
{
    gguf_w_str(w, key);
    gguf_w_u32(w, (uint32_t)type);
}
void gguf_w_tensor_info(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                        uint64_t offset)
{
    gguf_w_str(w, name);
    gguf_w_u32(w, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        gguf_w_u64(w, ne[d]);
    gguf_w_u32(w, type);
    gguf_w_u64(w, offset);
}
void gguf_w_pad(gguf_writer *w, uint32_t alignment)
{
    while (!w->failed && w->n % alignment)
        gguf_w_u8(w, 0);
}
