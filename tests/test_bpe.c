/* The byte-level BPE tokenizer (examples/llama/bpe.h): a hand-built vocabulary whose merges
 * exercise rank order, the byte alphabet, the pre-tokenizer's pieces (spaces, newlines,
 * contractions, digits, punctuation, UTF-8), control tokens, and decode(encode(x)) == x on
 * random bytes; with $SKV_MODEL naming SmolLM2-135M-Instruct's GGUF, the real vocabulary
 * against ids from Hugging Face `tokenizers` (docs/llama.md says how they were made). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "bpe.h"
#include "gguf.h"

/* ---- the tiny vocabulary: ids 0..255 are the bytes, then the merges' results ---- */

static char byte_text[256][4];

static void fill_byte_texts(void) {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        uint32_t cp = printable ? b : next++;
        char *o = byte_text[b];
        if (cp < 0x80) o[0] = (char)cp;
        else { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); }
    }
}

static const char *const merges[] = {
    "Ġ t", "h e", "Ġt he", "l l", "' s", "1 2", "Ã ¯", "e l", "y z", "x y",
};
enum { GT = 256, HE, GTHE, LL, AS, ONETWO, IUML, EL, YZ, XY, IMS, N_TINY };
static const char *const extra[] = {"Ġt", "he", "Ġthe", "ll", "'s", "12", "Ã¯", "el", "yz", "xy", "<|im_start|>"};

static bpe_vocab *tiny(void) {
    const char *tokens[N_TINY];
    int32_t types[N_TINY];
    fill_byte_texts();
    for (int i = 0; i < 256; i++) tokens[i] = byte_text[i];
    for (int i = 256; i < N_TINY; i++) tokens[i] = extra[i - 256];
    for (int i = 0; i < N_TINY; i++) types[i] = i == IMS ? BPE_TOKEN_CONTROL : 1;
    bpe_vocab *v = NULL;
    assert_int_equal(bpe_create(tokens, types, N_TINY, merges, sizeof merges / sizeof *merges, &v), BPE_OK);
    return v;
}

static void expect(const bpe_vocab *v, const char *text, bool special, const int32_t *want, size_t n_want) {
    int32_t ids[256];
    size_t n = 0;
    assert_int_equal(bpe_encode(v, text, strlen(text), special, ids, 256, &n), BPE_OK);
    bool same = n == n_want;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
    if (!same) {
        char got[1024] = "";
        size_t o = 0;
        for (size_t i = 0; i < n && o < 1000; i++) o += (size_t)snprintf(got + o, sizeof got - o, " %d", ids[i]);
        fail_msg("encode(\"%s\") gave%s", text, got);
    }
    char back[1024];
    size_t len = 0;
    assert_int_equal(bpe_decode(v, ids, n, back, sizeof back, &len), BPE_OK);
    assert_int_equal(len, strlen(text));
    assert_memory_equal(back, text, len);
}

#define EXPECT(v, text, special, ...)                                                                            \
    do {                                                                                                         \
        const int32_t want_[] = {__VA_ARGS__};                                                                   \
        expect(v, text, special, want_, sizeof want_ / sizeof *want_);                                           \
    } while (0)

static void test_tiny_pieces(void **state) {
    (void)state;
    bpe_vocab *v = tiny();
    EXPECT(v, "the", false, 't', HE);              /* no leading space: Ġt never forms */
    EXPECT(v, " the", false, GTHE);                /* Ġ t (rank 0), then Ġt he (rank 2) */
    EXPECT(v, "hello", false, HE, LL, 'o');        /* h e (1) before l l (3) before e l (7) */
    EXPECT(v, "xyz", false, 'x', YZ);              /* y z (rank 8) beats x y (rank 9) */
    EXPECT(v, "it's", false, 'i', 't', AS);        /* a contraction is a piece */
    EXPECT(v, "it 's", false, 'i', 't', ' ', '\'', 's'); /* " '" is punctuation, then a letter */
    EXPECT(v, "I'VE", false, 'I', '\'', 'V', 'E'); /* the pattern's contractions are lower case */
    EXPECT(v, "12", false, '1', '2');              /* digits one by one: the 1 2 merge never applies */
    EXPECT(v, "a  b\n", false, 'a', ' ', ' ', 'b', '\n'); /* "a" " " " b" "\n" */
    EXPECT(v, "a\n\n the", false, 'a', '\n', '\n', GTHE);
    EXPECT(v, "x, y!!", false, 'x', ',', ' ', 'y', '!', '!');
    EXPECT(v, "na\xc3\xafve", false, 'n', 'a', IUML, 'v', 'e'); /* ï is two bytes, merged */
    EXPECT(v, "<|im_start|>the", true, IMS, 't', HE);
    EXPECT(v, "<|im_start|>the", false, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>', 't', HE);
    EXPECT(v, "\xff\x80 the", false, 0xff, 0x80, GTHE); /* invalid UTF-8 still encodes byte by byte */

    int32_t ids[4];
    size_t n = 0;
    assert_int_equal(bpe_encode(v, " the the", 8, false, ids, 1, &n), BPE_ERR_SPACE);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], GTHE);
    assert_int_equal(bpe_encode(v, "", 0, false, NULL, 0, &n), BPE_OK);
    assert_int_equal(n, 0);
    char out[4];
    size_t len = 0;
    const int32_t bad = N_TINY;
    assert_int_equal(bpe_decode(v, &bad, 1, out, sizeof out, &len), BPE_ERR_ARG);
    assert_int_equal(bpe_token_id(v, "Ġthe"), GTHE);
    assert_int_equal(bpe_token_id(v, "nope"), -1);
    bpe_destroy(v);
    bpe_destroy(NULL);
}

/* A byte without a token is dropped (SmolLM2 lacks 21 of them); no byte token at all is refused */
static void test_tiny_missing_byte(void **state) {
    (void)state;
    fill_byte_texts();
    const char *tokens[255];
    for (int i = 0; i < 255; i++) tokens[i] = byte_text[i];
    bpe_vocab *v = NULL;
    assert_int_equal(bpe_create(tokens, NULL, 255, NULL, 0, &v), BPE_OK);
    int32_t ids[8];
    size_t n = 0;
    assert_int_equal(bpe_encode(v, "a\xff b", 4, false, ids, 8, &n), BPE_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 'a');
    assert_int_equal(ids[1], ' ');
    assert_int_equal(ids[2], 'b');
    bpe_destroy(v);
    const char *none[] = {"<|im_start|>"};
    v = NULL;
    assert_int_equal(bpe_create(none, NULL, 1, NULL, 0, &v), BPE_ERR_VOCAB);
    assert_null(v);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* decode(encode(x)) == x on bytes drawn from the pattern's classes, UTF-8, and raw bytes */
static void roundtrip_random(const bpe_vocab *v, int rounds, bool raw_bytes) {
    static const char pick[] = "  \n\t\r'sdtlmve0123456789.,!?-_aAzZ";
    static const char *const utf8[] = {"\xc3\xaf", "\xe2\x80\x94", "\xe6\x9d\xb1", "\xf0\x9f\x98\x80", "\xc2\xa0",
                                       "\xc2\xb2"};
    char text[200], back[200];
    int32_t ids[200];
    for (int r = 0; r < rounds; r++) {
        size_t len = next_u32() % 64;
        bool raw = raw_bytes && r % 2;
        size_t o = 0;
        while (o < len) {
            uint32_t k = next_u32();
            if (raw && k % 4 == 0) text[o++] = (char)(k >> 8);
            else if (k % 5 == 0) {
                const char *u = utf8[(k >> 8) % 6];
                memcpy(text + o, u, strlen(u));
                o += strlen(u);
            } else text[o++] = pick[(k >> 8) % (sizeof pick - 1)];
        }
        size_t n = 0, back_len = 0;
        assert_int_equal(bpe_encode(v, text, o, true, ids, 200, &n), BPE_OK);
        assert_int_equal(bpe_decode(v, ids, n, back, sizeof back, &back_len), BPE_OK);
        assert_int_equal(back_len, o);
        assert_memory_equal(back, text, o);
    }
}

static void test_tiny_roundtrip(void **state) {
    (void)state;
    bpe_vocab *v = tiny();
    roundtrip_random(v, 5000, true);
    bpe_destroy(v);
}

/* ---- the real vocabulary ---- */

typedef struct ref {
    const char *text;
    bool special;
    int32_t ids[24];
    size_t n;
} ref;

/* From Hugging Face tokenizers 0.x: BPE(vocab, merges) of this GGUF, pre-tokenizer
 * Digits(individual) + ByteLevel(use_regex), control tokens added as special tokens. */
static const ref refs[] = {
    {"The capital of France is", false, {504, 3575, 282, 4649, 314}, 5},
    {"Hello, world! It's 2026.", false, {19556, 28, 905, 17, 657, 506, 216, 34, 32, 34, 38, 30}, 12},
    {"line one\n\nline  two   end\n", false, {1311, 582, 198, 198, 1311, 216, 827, 256, 1112, 198}, 10},
    {"12345", false, {33, 34, 35, 36, 37}, 5},
    {"na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xe6\x9d\xb1\xe4\xba\xac", false,
     {3546, 46494, 37366, 1841, 17097, 247, 126, 16736, 122}, 9},
    {"<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", true,
     {1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198}, 16},
    {"I've we'll they're she'd don't", false, {57, 3543, 392, 3060, 502, 2316, 1041, 6737, 1326, 982}, 10},
    {"tabs\tand\r\nCRLF  \n  x", false, {100, 7366, 197, 397, 201, 198, 9088, 60, 54, 256, 3805, 1792}, 12},
    /* symbols outside ASCII: a run of them swallows the apostrophe, so "'m" is no contraction */
    {"it costs 4\xe2\x82\xac\xc2\xa3\xe2\x82\xac'm, a\xe2\x86\x92" "b \xe2\x98\x85 ok \xf0\x9f\x98\x80!", false,
     {269, 3499, 216, 36, 14195, 37564, 14195, 23, 93, 28, 253, 35132, 82, 4636, 242, 223, 10907, 40303, 218, 17}, 20},
};

static void test_real_vocab(void **state) {
    (void)state;
    const char *path = getenv("SKV_MODEL");
    if (!path || !*path) {
        print_message("[  SKIP    ] SKV_MODEL unset: set it to SmolLM2-135M-Instruct.Q4_1.gguf to check the real vocabulary\n");
        skip();
    }
    gguf_file *f = NULL;
    assert_int_equal(gguf_open_file(path, &f), GGUF_OK);
    const char *const *tokens, *const *merges_r;
    uint64_t n_tokens = 0, n_merges = 0, n_types = 0;
    assert_int_equal(gguf_get_strings(f, "tokenizer.ggml.tokens", &tokens, &n_tokens), GGUF_OK);
    assert_int_equal(gguf_get_strings(f, "tokenizer.ggml.merges", &merges_r, &n_merges), GGUF_OK);
    int32_t *types = malloc(n_tokens * sizeof *types);
    assert_non_null(types);
    assert_int_equal(gguf_get_i32s(f, "tokenizer.ggml.token_type", types, n_tokens, &n_types), GGUF_OK);
    assert_int_equal(n_types, n_tokens);
    bpe_vocab *v = NULL;
    assert_int_equal(bpe_create(tokens, types, n_tokens, merges_r, n_merges, &v), BPE_OK);
    for (size_t i = 0; i < sizeof refs / sizeof *refs; i++) expect(v, refs[i].text, refs[i].special, refs[i].ids, refs[i].n);
    roundtrip_random(v, 2000, false); /* valid UTF-8 only: the vocabulary lacks some bytes */

    /* speed: about 4096 tokens of English */
    const char *para = "The quick brown fox jumps over the lazy dog, and it's 1234 times faster than you'd think.\n";
    size_t plen = strlen(para), reps = 200, len = plen * reps;
    char *text = malloc(len);
    int32_t *ids = malloc(len * sizeof *ids);
    assert_non_null(text);
    assert_non_null(ids);
    for (size_t r = 0; r < reps; r++) memcpy(text + r * plen, para, plen);
    struct timespec t0, t1;
    size_t n = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(bpe_encode(v, text, len, false, ids, len, &n), BPE_OK);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    print_message("[  INFO    ] %zu bytes -> %zu tokens in %.1f ms\n", len, n, s * 1e3);
    assert_true(s < 1.0);
    free(text);
    free(ids);
    free(types);
    bpe_destroy(v);
    gguf_close(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_pieces),
        cmocka_unit_test(test_tiny_missing_byte),
        cmocka_unit_test(test_tiny_roundtrip),
        cmocka_unit_test(test_real_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
