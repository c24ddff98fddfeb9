/* A synthetic model of KV-cache statistics for `skv demo` (and later `skv eval`):
 * per (layer, kv-head) keys with a non-zero mean and outlier channels, RoPE applied at
 * each position, attention-sink tokens at the start, needle tokens whose keys a later
 * query points at, and queries sharing the keys' mean (which, through RoPE, favours
 * nearby positions: a local-attention bias). Deterministic from a seed. */
#ifndef SKV_SYNTH_H
#define SKV_SYNTH_H

#include <stdint.h>

typedef struct synth_model {
    uint32_t layers, kv_heads, q_heads, head_dim;
    uint64_t seed;
    uint32_t n_sinks;    /* tokens 0..n_sinks-1 are attention sinks */
    uint32_t n_needles;  /* needles in all: n_needles - n_multikey single ones first, then
                          * n_multikey in groups of 3 whose keys share most of their
                          * direction (RULER's multi-key needle-in-a-haystack: the query
                          * for one must not retrieve its neighbours' values) */
    uint32_t n_multikey;
    uint64_t needle_pos[16];
    float *mean;    /* [layer][head][d] key mean (pre-RoPE) */
    float *scale;   /* [layer][head][d] per-channel scale: a few outlier channels */
    float *sink;    /* [layer][head][d] sink direction */
    float *needle;  /* [needle][layer][head][d] needle key directions (pre-RoPE) */
    float *nvalue;  /* [needle][layer][head][d] needle values */
} synth_model;

int synth_init(synth_model *m, uint32_t layers, uint32_t kv_heads, uint32_t q_heads, uint32_t head_dim,
               uint64_t tokens, uint32_t n_needles, uint32_t n_multikey_groups, uint64_t seed);
void synth_free(synth_model *m);
/* Keys and values of tokens [t0, t0 + n) of one layer: [n][kv_heads][d], post-RoPE keys. */
void synth_kv(const synth_model *m, uint32_t layer, uint64_t t0, uint32_t n, float *k, float *v);
/* A decode query at position t: [q_heads][d], post-RoPE. needle < 0: an ordinary query;
 * else one aimed at needle `needle` from every q-head. */
void synth_query(const synth_model *m, uint32_t layer, uint64_t t, int needle, uint64_t salt, float *q);
/* -1 or the needle planted at position t. */
int synth_needle_at(const synth_model *m, uint64_t t);

#endif
