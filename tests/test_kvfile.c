/* Key/value files (skv_kvfile_*): round trips through memory and files in both dtypes and
 * versions, every truncation of a file, every header field corrupted, sizes whose
 * products overflow, bad ranges and arguments, and paths that are not regular files. No
 * OpenCL device is needed. */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

#define MAGIC 0x564B4B53u

typedef struct fixture {
    skv_kvfile_info info;
    float *k, *v, *q, *w;
    size_t nk, nq, nw; /* floats per tensor, all layers */
} fixture;

/* A small model: 3 layers, 2 kv-heads, 4 q-heads, head_dim 8, 19 tokens, 3 queries and a
 * window of 5 (version 2), values exact in fp16 (multiples of 1/64 below 64). */
static void fixture_make(fixture *f, uint32_t version, skv_dtype dtype)
{
    skv_kvfile_info_init(&f->info);
    f->info.version = version;
    f->info.dtype = dtype;
    f->info.layers = 3, f->info.kv_heads = 2, f->info.q_heads = 4, f->info.head_dim = 8, f->info.tokens = 19;
    f->info.n_queries = 3, f->info.n_window = version == 2 ? 5 : 0;
    if (version == 2)
        f->info.rope.theta = 10000.0f, f->info.rope.interleaved = 1;
    f->nk = (size_t)3 * 19 * 2 * 8, f->nq = (size_t)3 * 3 * 4 * 8, f->nw = (size_t)3 * f->info.n_window * 4 * 8;
    f->k = malloc(f->nk * 4), f->v = malloc(f->nk * 4), f->q = malloc(f->nq * 4);
    f->w = f->nw ? malloc(f->nw * 4) : NULL;
    assert_non_null(f->k), assert_non_null(f->v), assert_non_null(f->q);
    for (size_t i = 0; i < f->nk; i++)
        f->k[i] = (float)((int)(i * 37 % 4001) - 2000) / 64.0f, f->v[i] = (float)(i % 301) / 64.0f;
    for (size_t i = 0; i < f->nq; i++)
        f->q[i] = -(float)(i % 97) / 16.0f;
    for (size_t i = 0; i < f->nw; i++)
        f->w[i] = (float)(i % 53) / 8.0f;
}

static void fixture_free(fixture *f) { free(f->k), free(f->v), free(f->q), free(f->w); }

/* The fixture as file bytes (malloc'd) and their count. */
static unsigned char *fixture_bytes(const fixture *f, size_t *n)
{
    assert_ok(skv_kvfile_write_memory(&f->info, f->k, f->v, f->q, f->w, NULL, 0, n));
    unsigned char *b = malloc(*n);
    assert_non_null(b);
    size_t m = 0;
    assert_ok(skv_kvfile_write_memory(&f->info, f->k, f->v, f->q, f->w, b, *n, &m));
    assert_int_equal(m, *n);
    return b;
}

static void tmp_path(char *buf, size_t n, const char *name)
{
    const char *dir = getenv("SKV_TEST_TMP");
    snprintf(buf, n, "%s/test_kvfile_%s", dir && *dir ? dir : "/tmp", name);
}

/* Every tensor of every layer read back whole and in two parts equals what was written. */
static void check_reads(skv_kvfile *kf, const fixture *f)
{
    skv_kvfile_info in = {.struct_size = sizeof in};
    assert_ok(skv_kvfile_get_info(kf, &in));
    assert_int_equal(in.version, f->info.version);
    assert_int_equal(in.dtype, f->info.dtype);
    assert_int_equal(in.layers, 3), assert_int_equal(in.kv_heads, 2), assert_int_equal(in.q_heads, 4);
    assert_int_equal(in.head_dim, 8), assert_int_equal(in.tokens, 19), assert_int_equal(in.n_queries, 3);
    assert_int_equal(in.n_window, f->info.n_window);
    assert_true(in.rope.theta == f->info.rope.theta);
    assert_int_equal(in.rope.interleaved, f->info.rope.interleaved);
    assert_int_equal(in.rope.rotary_dims, 8);
    uint64_t want = 0;
    assert_ok(skv_kvfile_size(&f->info, &want));
    assert_int_equal(in.file_bytes, want);
    float buf[19 * 4 * 8];
    const struct {
        skv_kvfile_tensor t;
        const float *src;
        uint32_t rows, row;
    } ts[4] = {{SKV_KVFILE_KEYS, f->k, 19, 16},
               {SKV_KVFILE_VALUES, f->v, 19, 16},
               {SKV_KVFILE_QUERIES, f->q, 3, 32},
               {SKV_KVFILE_WINDOW, f->w, f->info.n_window, 32}};
    for (int t = 0; t < 4; t++)
        for (uint32_t l = 0; l < 3; l++) {
            const float *src = ts[t].src ? ts[t].src + (size_t)l * ts[t].rows * ts[t].row : NULL;
            memset(buf, 0xFF, sizeof buf);
            assert_ok(skv_kvfile_read(kf, ts[t].t, l, 0, ts[t].rows, buf));
            if (ts[t].rows)
                assert_memory_equal(buf, src, (size_t)ts[t].rows * ts[t].row * 4);
            if (ts[t].rows < 2)
                continue;
            const uint32_t a = ts[t].rows / 2 + 1; /* an awkward split */
            assert_ok(skv_kvfile_read(kf, ts[t].t, l, a, ts[t].rows - a, buf));
            assert_memory_equal(buf, src + (size_t)a * ts[t].row, (size_t)(ts[t].rows - a) * ts[t].row * 4);
            assert_ok(skv_kvfile_read(kf, ts[t].t, l, 1, 1, buf));
            assert_memory_equal(buf, src + ts[t].row, ts[t].row * 4);
        }
}

static void test_round_trip(void **state)
{
    (void)state;
    const uint32_t versions[2] = {1, 2};
    const skv_dtype dtypes[2] = {SKV_F32, SKV_F16};
    for (int vi = 0; vi < 2; vi++)
        for (int di = 0; di < 2; di++) {
            fixture f;
            fixture_make(&f, versions[vi], dtypes[di]);
            size_t n;
            unsigned char *b = fixture_bytes(&f, &n);
            const size_t floats = 2 * f.nk + f.nq + f.nw;
            assert_int_equal(n, 4 * (versions[vi] == 2 ? 12 : 9) + floats * (dtypes[di] == SKV_F16 ? 2 : 4));
            skv_kvfile *kf = NULL;
            assert_ok(skv_kvfile_open_memory(b, n, &kf));
            check_reads(kf, &f);
            skv_kvfile_close(kf);

            char path[512];
            tmp_path(path, sizeof path, "round_trip.kv");
            assert_ok(skv_kvfile_write(path, &f.info, f.k, f.v, f.q, f.w));
            assert_ok(skv_kvfile_open(path, &kf));
            check_reads(kf, &f);
            skv_kvfile_close(kf);
            /* the file holds exactly the bytes the memory writer gives */
            FILE *fp = fopen(path, "rb");
            assert_non_null(fp);
            unsigned char *c = malloc(n + 1);
            assert_int_equal(fread(c, 1, n + 1, fp), n);
            fclose(fp);
            assert_memory_equal(b, c, n);
            free(c);
            remove(path);
            free(b);
            fixture_free(&f);
        }
}

/* Every prefix of a file (each byte boundary of the header, and every length up to the
 * whole) and the file with one byte more: SKV_ERR_IO naming the size, nothing opened. */
static void test_truncated(void **state)
{
    (void)state;
    for (uint32_t version = 1; version <= 2; version++) {
        fixture f;
        fixture_make(&f, version, SKV_F16);
        size_t n;
        unsigned char *b = fixture_bytes(&f, &n);
        unsigned char *longer = malloc(n + 1);
        memcpy(longer, b, n);
        longer[n] = 0;
        for (size_t len = 0; len <= n + 1; len++) {
            if (len == n)
                continue;
            /* a copy of exactly len bytes, so ASan sees any read past it */
            unsigned char *c = malloc(len ? len : 1);
            memcpy(c, longer, len);
            skv_kvfile *kf = (skv_kvfile *)(uintptr_t)1;
            skv_status st = skv_kvfile_open_memory(c, len, &kf);
            if (st != SKV_ERR_IO)
                fail_msg("version %u, %zu of %zu bytes: %s (%s)", version, len, n, skv_status_str(st), skv_last_error());
            assert_true(kf == (skv_kvfile *)(uintptr_t)1); /* *out untouched */
            assert_true(strlen(skv_last_error()) > 0);
            free(c);
        }
        /* the file variant at each header boundary */
        char path[512];
        tmp_path(path, sizeof path, "truncated.kv");
        for (size_t len = 0; len <= 4 * 12 + 1; len++) {
            FILE *fp = fopen(path, "wb");
            assert_non_null(fp);
            assert_int_equal(fwrite(b, 1, len, fp), len);
            fclose(fp);
            skv_kvfile *kf = NULL;
            assert_status(skv_kvfile_open(path, &kf), SKV_ERR_IO);
            assert_null(kf);
            assert_non_null(strstr(skv_last_error(), path));
        }
        remove(path);
        free(longer);
        free(b);
        fixture_free(&f);
    }
}

static void put32(unsigned char *b, size_t word, uint32_t x)
{
    b[4 * word] = (unsigned char)x, b[4 * word + 1] = (unsigned char)(x >> 8);
    b[4 * word + 2] = (unsigned char)(x >> 16), b[4 * word + 3] = (unsigned char)(x >> 24);
}

static skv_status open_bytes(const unsigned char *b, size_t n)
{
    skv_kvfile *kf = NULL;
    skv_status st = skv_kvfile_open_memory(b, n, &kf);
    skv_kvfile_close(kf);
    return st;
}

/* Each header field set to values out of range: SKV_ERR_INVALID_ARG with a message (the
 * file size still matching what the rest of the header says where it matters). */
static void test_corrupt_fields(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, 2, SKV_F32);
    size_t n;
    unsigned char *b = fixture_bytes(&f, &n);
    unsigned char *c = malloc(n);
    const float nan = NAN, inf = INFINITY, zero = 0.0f, neg = -1.0f;
    uint32_t nan_bits, inf_bits, zero_bits, neg_bits;
    memcpy(&nan_bits, &nan, 4), memcpy(&inf_bits, &inf, 4), memcpy(&zero_bits, &zero, 4), memcpy(&neg_bits, &neg, 4);
    const struct {
        size_t word;
        uint32_t value;
        const char *says; /* a word of the message */
    } bad[] = {
        {0, 0x564B4B54u, "magic"}, {0, 0, "magic"},          {1, 0, "version"},         {1, 3, "version"},
        {1, 0xFFFFFFFFu, "version"}, {2, 2, "dtype"},        {2, 0xFFFFFFFFu, "dtype"}, {3, 0, "layers"},
        {3, 1025, "layers"},       {3, 0xFFFFFFFFu, "layers"}, {4, 0, "kv_heads"},      {4, 3, "q_heads"},
        {4, 0xFFFFFFFFu, "kv_heads"}, {5, 0, "q_heads"},     {5, 5, "q_heads"},         {5, 4098, "q_heads"},
        {5, 0xFFFFFFFFu, "q_heads"}, {6, 0, "head_dim"},     {6, 1025, "head_dim"},     {7, 0, "tokens"},
        {7, 4, "n_window"},        {7, (1u << 24) + 1, "tokens"}, {8, 0, "n_queries"},  {8, 1025, "n_queries"},
        {9, 20, "n_window"},       {9, 4097, "n_window"},    {10, nan_bits, "theta"},   {10, inf_bits, "theta"},
        {10, zero_bits, "theta"},  {10, neg_bits, "theta"},  {11, 2, "layout"},         {11, 0xFFFFFFFFu, "layout"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(c, b, n);
        put32(c, bad[i].word, bad[i].value);
        skv_status st = open_bytes(c, n);
        if (st != SKV_ERR_INVALID_ARG || !strstr(skv_last_error(), bad[i].says))
            fail_msg("word %zu = 0x%x: %s (%s), expected invalid argument naming %s", bad[i].word, bad[i].value,
                     skv_status_str(st), skv_last_error(), bad[i].says);
    }
    /* fields in range that disagree with the size: an I/O error (the file is not what it says) */
    const size_t grow[][2] = {{3, 2}, {4, 1}, {6, 4}, {7, 18}, {8, 2}, {9, 4}, {2, 1}};
    for (size_t i = 0; i < sizeof grow / sizeof grow[0]; i++) {
        memcpy(c, b, n);
        put32(c, grow[i][0], (uint32_t)grow[i][1]);
        assert_status(open_bytes(c, n), SKV_ERR_IO);
    }
    /* theta, layout are free without a window; a version-1 file has neither */
    memcpy(c, b, n);
    put32(c, 9, 0);
    assert_status(open_bytes(c, n - 3 * 5 * 4 * 8 * 4), SKV_OK);
    put32(c, 10, nan_bits);
    assert_status(open_bytes(c, n - 3 * 5 * 4 * 8 * 4), SKV_OK);
    free(c);
    free(b);
    fixture_free(&f);
}

/* Headers whose size products overflow 64 bits (every field at its maximum value) are
 * refused without allocating by them, and the size query refuses the same geometry. */
static void test_overflow(void **state)
{
    (void)state;
    unsigned char h[48];
    const uint32_t words[12] = {MAGIC, 2, 0, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu,
                                0xFFFFFFFFu, 0xFFFFFFFFu, 0x461C4000u, 1};
    for (size_t i = 0; i < 12; i++)
        put32(h, i, words[i]);
    assert_status(open_bytes(h, sizeof h), SKV_ERR_INVALID_ARG);
    /* the largest geometry inside every limit: its size is computed, the file is not it */
    const uint32_t top[12] = {MAGIC, 2, 0, 1024, 1024, 4096, 1024, 1u << 24, 1024, 4096, 0x461C4000u, 1};
    for (size_t i = 0; i < 12; i++)
        put32(h, i, top[i]);
    assert_status(open_bytes(h, sizeof h), SKV_ERR_IO);
    assert_non_null(strstr(skv_last_error(), "the header says"));
    skv_kvfile_info in;
    skv_kvfile_info_init(&in);
    in.layers = in.kv_heads = in.head_dim = in.tokens = in.n_queries = in.q_heads = 0xFFFFFFFFu;
    uint64_t bytes = 0;
    assert_status(skv_kvfile_size(&in, &bytes), SKV_ERR_INVALID_ARG);
    in.layers = 1024, in.kv_heads = 1024, in.q_heads = 4096, in.head_dim = 1024, in.tokens = 1u << 24;
    in.n_queries = 1024, in.n_window = 4096, in.rope.theta = 10000.0f;
    assert_ok(skv_kvfile_size(&in, &bytes));
    const uint64_t per_layer = (2ull * (1u << 24) * 1024 * 1024 + (1024ull + 4096) * 4096 * 1024) * 4;
    assert_true(bytes == 48 + 1024 * per_layer);
    /* a write of that geometry is refused before it touches the arrays */
    float one = 0;
    size_t size = 0;
    unsigned char small[64];
    assert_status(skv_kvfile_write_memory(&in, &one, &one, &one, &one, small, sizeof small, &size),
                  SKV_ERR_INVALID_ARG);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, 2, SKV_F32);
    size_t n;
    unsigned char *b = fixture_bytes(&f, &n);
    skv_kvfile *kf = NULL;
    assert_status(skv_kvfile_open_memory(NULL, 4, &kf), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_open_memory(b, n, NULL), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_open(NULL, &kf), SKV_ERR_INVALID_ARG);
    assert_ok(skv_kvfile_open_memory(b, n, &kf));
    float out[19 * 4 * 8];
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 3, 0, 1, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 0, 20, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 20, 0, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 19, 1, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, UINT64_MAX, 2, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 2, UINT64_MAX, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_WINDOW, 0, 0, 6, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, (skv_kvfile_tensor)4, 0, 0, 1, out), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 0, 1, NULL), SKV_ERR_INVALID_ARG);
    assert_ok(skv_kvfile_read(kf, SKV_KVFILE_KEYS, 0, 19, 0, NULL)); /* an empty range */
    skv_kvfile_info in = {.struct_size = sizeof in - 1};
    assert_status(skv_kvfile_get_info(kf, &in), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_get_info(NULL, &in), SKV_ERR_INVALID_ARG);
    skv_kvfile_close(kf);
    skv_kvfile_close(NULL);

    size_t size = 0;
    unsigned char *buf = malloc(n);
    assert_status(skv_kvfile_write_memory(&f.info, f.k, f.v, f.q, f.w, buf, n - 1, &size), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_write_memory(&f.info, f.k, f.v, f.q, NULL, buf, n, &size), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_write_memory(&f.info, NULL, f.v, f.q, f.w, buf, n, &size), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_write_memory(&f.info, f.k, f.v, f.q, f.w, buf, n, NULL), SKV_ERR_INVALID_ARG);
    skv_kvfile_info bad = f.info;
    bad.struct_size = 8;
    assert_status(skv_kvfile_write_memory(&bad, f.k, f.v, f.q, f.w, buf, n, &size), SKV_ERR_INVALID_ARG);
    bad = f.info;
    bad.version = 1; /* a window needs version 2 */
    assert_status(skv_kvfile_write_memory(&bad, f.k, f.v, f.q, f.w, buf, n, &size), SKV_ERR_INVALID_ARG);
    bad = f.info;
    bad.dtype = SKV_BF16;
    assert_status(skv_kvfile_write_memory(&bad, f.k, f.v, f.q, f.w, buf, n, &size), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_write(NULL, &f.info, f.k, f.v, f.q, f.w), SKV_ERR_INVALID_ARG);
    assert_status(skv_kvfile_write("/nonexistent-dir/x.kv", &f.info, f.k, f.v, f.q, f.w), SKV_ERR_IO);
    free(buf);
    free(b);
    fixture_free(&f);
}

/* A FIFO (which would block an ordinary open), a folder and a missing file: SKV_ERR_IO,
 * at once. */
static void test_not_regular(void **state)
{
    (void)state;
    char path[512];
    tmp_path(path, sizeof path, "fifo.kv");
    remove(path);
    assert_int_equal(mkfifo(path, 0600), 0);
    skv_kvfile *kf = NULL;
    assert_status(skv_kvfile_open(path, &kf), SKV_ERR_IO);
    assert_non_null(strstr(skv_last_error(), "not a regular file"));
    remove(path);
    tmp_path(path, sizeof path, "dir.kv");
    rmdir(path);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_status(skv_kvfile_open(path, &kf), SKV_ERR_IO);
    rmdir(path);
    assert_status(skv_kvfile_open(path, &kf), SKV_ERR_IO);
    assert_null(kf);
}

int main(int argc, char **argv)
{
    if (test_filter_args(argc, argv))
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_corrupt_fields), cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_bad_arguments), cmocka_unit_test(test_not_regular),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
