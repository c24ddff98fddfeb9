/* A GGUF reader (llama.cpp's model file format, versions 2 and 3): the header, the
 * metadata key/value table (every value type, arrays nested), the tensor table, and
 * float32 dequantisation of F32, F16, Q8_0 and Q4_1 tensors. Self-contained: it uses no
 * skv internals, so the Llama runtime of issue 18 can link it beside skv's public API.
 *
 * Every count, length, offset and size read from a file is checked against the bytes
 * that remain before anything is allocated by it; a malformed file is refused with a
 * status and a message (gguf_last_error), never a crash. Files are little-endian. */
#ifndef SKV_GGUF_H
#define SKV_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gguf_status {
    GGUF_OK = 0,
    GGUF_ERR_IO = 1,          /* the file could not be opened or read */
    GGUF_ERR_FORMAT = 2,      /* bad magic, version, type, count, offset, duplicate */
    GGUF_ERR_TRUNCATED = 3,   /* the file ends inside something it declares */
    GGUF_ERR_NOMEM = 4,       /* an allocation failed */
    GGUF_ERR_NOT_FOUND = 5,   /* no such key or tensor */
    GGUF_ERR_TYPE = 6,        /* the key's value has another type, or is out of range */
    GGUF_ERR_UNSUPPORTED = 7, /* a tensor type this reader cannot dequantise */
    GGUF_ERR_INVALID_ARG = 8, /* a NULL pointer, an index out of range, a short buffer */
} gguf_status;

const char *gguf_status_str(gguf_status st);
/* The message of this thread's last failure ("" after none). */
const char *gguf_last_error(void);

/* Metadata value types (their numbers are the file's). */
typedef enum gguf_vtype {
    GGUF_UINT8 = 0,
    GGUF_INT8 = 1,
    GGUF_UINT16 = 2,
    GGUF_INT16 = 3,
    GGUF_UINT32 = 4,
    GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_UINT64 = 10,
    GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12,
} gguf_vtype;
#define GGUF_VTYPE_COUNT 13
const char *gguf_vtype_name(gguf_vtype t);

/* Tensor types (ggml's numbers). Sizes are known for the common ones; only F32, F16,
 * Q8_0 and Q4_1 dequantise. */
typedef enum gguf_ttype {
    GGUF_F32 = 0,
    GGUF_F16 = 1,
    GGUF_Q4_0 = 2,
    GGUF_Q4_1 = 3,
    GGUF_Q5_0 = 6,
    GGUF_Q5_1 = 7,
    GGUF_Q8_0 = 8,
    GGUF_Q8_1 = 9,
    GGUF_Q2_K = 10,
    GGUF_Q3_K = 11,
    GGUF_Q4_K = 12,
    GGUF_Q5_K = 13,
    GGUF_Q6_K = 14,
    GGUF_Q8_K = 15,
    GGUF_I8 = 24,
    GGUF_I16 = 25,
    GGUF_I32 = 26,
    GGUF_I64 = 27,
    GGUF_F64 = 28,
    GGUF_BF16 = 30,
} gguf_ttype;
/* "F32", "Q4_1", ... or NULL for a type this reader does not know. */
const char *gguf_ttype_name(uint32_t type);
/* Values per block and bytes per block of a known type (false for an unknown one). */
bool gguf_ttype_block(uint32_t type, uint32_t *block_values, uint32_t *block_bytes);

/* A metadata value. Strings are NUL-terminated copies (len excludes the NUL; a string
 * holding a NUL byte reads shorter through C string functions, never past its end).
 * An array of scalars keeps its elements as the file's little-endian bytes (read them
 * with gguf_array_int / gguf_array_float); an array of strings has strs/lens; an array
 * of arrays has items. Everything lives as long as the gguf_file. */
typedef struct gguf_value gguf_value;
struct gguf_value {
    gguf_vtype type;
    union {
        uint64_t u64; /* UINT8, UINT16, UINT32, UINT64 */
        int64_t i64;  /* INT8, INT16, INT32, INT64 */
        double f64;   /* FLOAT32, FLOAT64 */
        bool b;       /* BOOL */
        struct {
            const char *s;
            uint64_t len;
        } str; /* STRING */
        struct {
            gguf_vtype elem;
            uint64_t n;
            const uint8_t *raw;             /* scalar elements */
            const char *const *strs;        /* STRING elements */
            const uint64_t *lens;           /* STRING elements' lengths */
            const gguf_value *items;        /* ARRAY elements */
        } arr; /* ARRAY */
    } v;
};

typedef struct gguf_kv {
    const char *key;
    gguf_value value;
} gguf_kv;

#define GGUF_MAX_DIMS 4
typedef struct gguf_tensor {
    const char *name;
    uint32_t n_dims;           /* 0..4; dims past n_dims are 1 */
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension (a row) */
    uint32_t type;             /* gguf_ttype, or a number this reader does not know */
    uint64_t offset;           /* from the data section's start, a multiple of the alignment */
    uint64_t n_elements;
    uint64_t n_bytes;          /* 0 when the type is unknown */
    const void *data;          /* inside the file; NULL when the type is unknown */
} gguf_tensor;

typedef struct gguf_file gguf_file;

/* Opens a file (read whole into memory). */
gguf_status gguf_open_file(const char *path, gguf_file **out);
/* Parses a buffer the caller keeps alive and unchanged until gguf_close. */
gguf_status gguf_open_memory(const void *data, size_t size, gguf_file **out);
void gguf_close(gguf_file *f); /* NULL is fine */

uint32_t gguf_version(const gguf_file *f);
uint32_t gguf_alignment(const gguf_file *f); /* general.alignment, else 32 */
uint64_t gguf_data_offset(const gguf_file *f); /* where the data section starts */
size_t gguf_file_size(const gguf_file *f);

uint64_t gguf_n_kv(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i);  /* NULL past the end */
const gguf_value *gguf_find(const gguf_file *f, const char *key); /* NULL if absent */

/* Typed getters: GGUF_ERR_NOT_FOUND without the key, GGUF_ERR_TYPE when its value does not
 * convert (any integer type in range for get_u32/get_i64; FLOAT32/FLOAT64 for get_f32). */
gguf_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
gguf_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
gguf_status gguf_get_f32(const gguf_file *f, const char *key, float *out);
gguf_status gguf_get_bool(const gguf_file *f, const char *key, bool *out);
gguf_status gguf_get_string(const gguf_file *f, const char *key, const char **out);
/* An array of strings (tokenizer.ggml.tokens, tokenizer.ggml.merges). */
gguf_status gguf_get_strings(const gguf_file *f, const char *key, const char *const **strs, uint64_t *n);
/* An array of integers into int32 (tokenizer.ggml.token_type): *n is the array's length;
 * GGUF_ERR_INVALID_ARG when cap is smaller, GGUF_ERR_TYPE when an element is out of range. */
gguf_status gguf_get_i32s(const gguf_file *f, const char *key, int32_t *out, uint64_t cap, uint64_t *n);

/* Element i of an array of integers or bools, or of floats. */
gguf_status gguf_array_int(const gguf_value *a, uint64_t i, int64_t *out);
gguf_status gguf_array_float(const gguf_value *a, uint64_t i, double *out);

uint64_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i); /* NULL past the end */
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* The tensor's n_elements values as float32 into out (cap floats). GGUF_ERR_UNSUPPORTED
 * for a type other than F32, F16, Q8_0, Q4_1. */
gguf_status gguf_dequantize(const gguf_tensor *t, float *out, uint64_t cap);

/* ---- Writing (tests and fuzz seeds): a growing byte buffer; calls after a failed
 * allocation do nothing and leave failed set. The caller frees p. */
typedef struct gguf_writer {
    uint8_t *p;
    size_t n, cap;
    bool failed;
} gguf_writer;
void gguf_w_bytes(gguf_writer *w, const void *p, size_t n);
void gguf_w_u8(gguf_writer *w, uint8_t v);
void gguf_w_u16(gguf_writer *w, uint16_t v);
void gguf_w_u32(gguf_writer *w, uint32_t v);
void gguf_w_u64(gguf_writer *w, uint64_t v);
void gguf_w_f32(gguf_writer *w, float v);
void gguf_w_f64(gguf_writer *w, double v);
void gguf_w_str(gguf_writer *w, const char *s); /* uint64 length + bytes */
void gguf_w_header(gguf_writer *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
void gguf_w_key(gguf_writer *w, const char *key, gguf_vtype type); /* then the value */
void gguf_w_tensor_info(gguf_writer *w, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                        uint64_t offset);
void gguf_w_pad(gguf_writer *w, uint32_t alignment); /* zeros up to a multiple */
/* fp16 bits of a float (round to nearest even), and back. */
uint16_t gguf_f32_to_f16(float f);
float gguf_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif
