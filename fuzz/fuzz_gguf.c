/* libFuzzer harness: the GGUF reader of the Llama example (examples/llama/gguf.c,
 * gguf_open_memory). A refused input leaves a message and no file; an accepted one must
 * answer every getter on every key without reading outside the input, have every tensor
 * of a known type inside the data section (aligned), and dequantise each tensor of a
 * supported type to exactly its element count (refusing the others). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "fuzz_check.h"

static void walk(const gguf_value *v, int depth)
{
    CHECK(depth <= 9);
    if (v->type == GGUF_STRING) {
        CHECK(strlen(v->v.str.s) <= v->v.str.len);
        return;
    }
    if (v->type != GGUF_ARRAY)
        return;
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
        int64_t x;
        double d;
        if (v->v.arr.elem == GGUF_STRING)
            CHECK(strlen(v->v.arr.strs[i]) <= v->v.arr.lens[i]);
        else if (v->v.arr.elem == GGUF_ARRAY)
            walk(&v->v.arr.items[i], depth + 1);
        else if (v->v.arr.elem == GGUF_FLOAT32 || v->v.arr.elem == GGUF_FLOAT64)
            CHECK(gguf_array_float(v, i, &d) == GGUF_OK);
        else
            (void)gguf_array_int(v, i, &x); /* uint64 above INT64_MAX is refused */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_file *f = (gguf_file *)&f;
    if (gguf_open_memory(data, size, &f) != GGUF_OK) {
        CHECK(f == NULL && gguf_last_error()[0]);
        return 0;
    }
    const uint32_t align = gguf_alignment(f);
    CHECK(align && (align & (align - 1)) == 0 && gguf_data_offset(f) % align == 0);
    for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        CHECK(kv && gguf_find(f, kv->key) == &kv->value);
        walk(&kv->value, 0);
        uint32_t u;
        int64_t x;
        float fl;
        bool b;
        const char *s;
        const char *const *strs;
        uint64_t n;
        (void)gguf_get_u32(f, kv->key, &u);
        (void)gguf_get_i64(f, kv->key, &x);
        (void)gguf_get_f32(f, kv->key, &fl);
        (void)gguf_get_bool(f, kv->key, &b);
        CHECK((gguf_get_string(f, kv->key, &s) == GGUF_OK) == (kv->value.type == GGUF_STRING));
        if (gguf_get_strings(f, kv->key, &strs, &n) == GGUF_OK)
            for (uint64_t j = 0; j < n; j++)
                CHECK(strs[j] != NULL);
        if (kv->value.type == GGUF_ARRAY && kv->value.v.arr.n <= 4096) {
            int32_t ints[4096];
            (void)gguf_get_i32s(f, kv->key, ints, 4096, &n);
        }
    }
    CHECK(gguf_kv_at(f, gguf_n_kv(f)) == NULL);
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        CHECK(t && gguf_find_tensor(f, t->name) == t && t->n_dims <= GGUF_MAX_DIMS && t->offset % align == 0);
        uint32_t bv, bb;
        if (!gguf_ttype_block(t->type, &bv, &bb)) {
            CHECK(t->data == NULL && t->n_bytes == 0);
            continue;
        }
        CHECK(t->n_bytes == t->n_elements / bv * bb);
        const uint8_t *p = t->data;
        CHECK(p >= data + gguf_data_offset(f) && (size_t)(p - data) + t->n_bytes <= size);
        float *out = malloc(t->n_elements * sizeof *out + 1); /* n_bytes <= size bounds it */
        CHECK(out);
        const gguf_status st = gguf_dequantize(t, out, t->n_elements);
        const bool supported = t->type == GGUF_F32 || t->type == GGUF_F16 || t->type == GGUF_Q8_0 ||
                               t->type == GGUF_Q4_1;
        CHECK(st == (supported ? GGUF_OK : GGUF_ERR_UNSUPPORTED));
        free(out);
    }
    gguf_close(f);
    return 0;
}
