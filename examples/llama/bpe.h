/* A byte-level BPE tokenizer (GPT-2 style, as SmolLM2's GGUF describes it): built from the
 * vocabulary and merges in tokenizer.ggml.*, encodes UTF-8 text (or any bytes) to token ids
 * and decodes ids back to bytes. libc only; no skv internals. See docs/llama.md. */
#ifndef SKV_EXAMPLES_BPE_H
#define SKV_EXAMPLES_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum bpe_status {
    BPE_OK = 0,
    BPE_ERR_ARG = 1,    /* a NULL pointer or a bad id */
    BPE_ERR_NOMEM = 2,
    BPE_ERR_VOCAB = 3,  /* the vocabulary has none of the byte-level alphabet */
    BPE_ERR_SPACE = 4,  /* the output did not fit; *n says how much was needed */
} bpe_status;

typedef struct bpe_vocab bpe_vocab;

/* The token type of control tokens (<|im_start|>), as tokenizer.ggml.token_type has it */
#define BPE_TOKEN_CONTROL 3

const char *bpe_status_str(bpe_status st);

/* tokens[i] is token i's text in the byte-level alphabet; types may be NULL (all normal);
 * merges[r] is "A B", rank r. Merges naming unknown tokens are ignored. Bytes whose alphabet
 * character is not a token (SmolLM2 lacks 21: 0x04, 0xC0, 0xFF, ...) are dropped when
 * encoding, as Hugging Face's BPE without an unknown token drops them. */
bpe_status bpe_create(const char *const *tokens, const int32_t *types, uint64_t n_tokens,
                      const char *const *merges, uint64_t n_merges, bpe_vocab **out);
void bpe_destroy(bpe_vocab *v); /* NULL is fine */

uint64_t bpe_n_tokens(const bpe_vocab *v);
/* The id of a token's exact text, or -1 */
int32_t bpe_token_id(const bpe_vocab *v, const char *text);

/* Encodes len bytes of text. With special, control tokens' texts found in the input become
 * their ids; without, they are ordinary text. *n is the number of ids; BPE_ERR_SPACE when it
 * exceeds cap (the first cap ids are written). */
bpe_status bpe_encode(const bpe_vocab *v, const char *text, size_t len, bool special, int32_t *ids,
                      size_t cap, size_t *n);

/* Decodes ids to bytes (control tokens as their text). *len is the number of bytes;
 * BPE_ERR_SPACE when it exceeds cap. No terminating NUL is written. */
bpe_status bpe_decode(const bpe_vocab *v, const int32_t *ids, size_t n_ids, char *out, size_t cap,
                      size_t *len);

#endif
