/* Byte-level BPE (GPT-2 / SmolLM2): the byte<->unicode alphabet, the pre-tokenizer (digits
 * one by one, then the GPT-2 pattern), rank-ordered merges per word, and decoding.
 * The pattern's Unicode classes are exact for ASCII; for other code points a small table
 * covers Latin-1 and General Punctuation, and everything else counts as a letter. */
#include "bpe.h"

#include <stdlib.h>
#include <string.h>

typedef struct slot { /* token text -> id, or merge pair -> rank */
    uint64_t key;
    int32_t a, b; /* token map: b = id; pair map: a = rank, b = merged id */
    const char *text;
} slot;

struct bpe_vocab {
    uint64_t n_tokens;
    char **text;          /* token texts (copies) */
    size_t *text_len;
    unsigned char **bytes; /* decoded bytes per token */
    size_t *bytes_len;
    int32_t *type;
    slot *tok;            /* open addressing, power-of-two capacity */
    size_t tok_cap;
    slot *pair;
    size_t pair_cap;
    int32_t byte_tok[256]; /* the token of each single byte */
    uint32_t byte_cp[256]; /* bytes_to_unicode */
    int32_t *specials;     /* control token ids, longest text first */
    size_t n_specials;
};

const char *bpe_status_str(bpe_status st) {
    switch (st) {
    case BPE_OK: return "ok";
    case BPE_ERR_ARG: return "invalid argument";
    case BPE_ERR_NOMEM: return "out of memory";
    case BPE_ERR_VOCAB: return "vocabulary lacks a byte token";
    case BPE_ERR_SPACE: return "output buffer too small";
    }
    return "unknown status";
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(uint64_t n) {
    size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
}

static int32_t tok_find(const bpe_vocab *v, const char *s, size_t n) {
    uint64_t h = hash_bytes(s, n);
    for (size_t i = h & (v->tok_cap - 1);; i = (i + 1) & (v->tok_cap - 1)) {
        const slot *e = &v->tok[i];
        if (!e->text) return -1;
        if (e->key == h && v->text_len[e->b] == n && memcmp(e->text, s, n) == 0) return e->b;
    }
}

static const slot *pair_find(const bpe_vocab *v, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = mix(key) & (v->pair_cap - 1);; i = (i + 1) & (v->pair_cap - 1)) {
        const slot *e = &v->pair[i];
        if (e->a < 0) return NULL;
        if (e->key == key) return e;
    }
}

static size_t utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* One code point of strict UTF-8 at s[0..n); returns its length, or 0 when invalid. */
static size_t utf8_get(const unsigned char *s, size_t n, uint32_t *cp) {
    if (s[0] < 0x80) { *cp = s[0]; return 1; }
    size_t len;
    uint32_t c, min;
    if ((s[0] & 0xE0) == 0xC0) { len = 2; c = s[0] & 0x1F; min = 0x80; }
    else if ((s[0] & 0xF0) == 0xE0) { len = 3; c = s[0] & 0x0F; min = 0x800; }
    else if ((s[0] & 0xF8) == 0xF0) { len = 4; c = s[0] & 0x07; min = 0x10000; }
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return len;
}

static void bytes_to_unicode(uint32_t map[256]) {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        map[b] = printable ? b : next++;
    }
}

void bpe_destroy(bpe_vocab *v) {
    if (!v) return;
    if (v->text)
        for (uint64_t i = 0; i < v->n_tokens; i++) free(v->text[i]);
    if (v->bytes)
        for (uint64_t i = 0; i < v->n_tokens; i++) free(v->bytes[i]);
    free(v->text); free(v->text_len); free(v->bytes); free(v->bytes_len); free(v->type);
    free(v->tok); free(v->pair); free(v->specials);
    free(v);
}

/* Decodes a token's byte-level text to the bytes it stands for (characters outside the
 * alphabet, as in control tokens, stand for their own UTF-8). */
static bpe_status token_bytes(const bpe_vocab *v, const char *s, size_t n, unsigned char **out, size_t *len) {
    unsigned char *b = malloc(n + 1);
    if (!b) return BPE_ERR_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_get((const unsigned char *)s + i, n - i, &cp);
        int byte = -1;
        if (l) {
            if (cp < 324) /* the alphabet's largest code point is 323 */
                for (int k = 0; k < 256; k++)
                    if (v->byte_cp[k] == cp) { byte = k; break; }
        } else {
            l = 1;
        }
        if (byte >= 0) b[o++] = (unsigned char)byte;
        else { memcpy(b + o, s + i, l); o += l; }
        i += l;
    }
    *out = b;
    *len = o;
    return BPE_OK;
}

/* Control tokens longest first, so that the longest match wins (insertion sort: few) */
static void sort_specials(bpe_vocab *v) {
    for (size_t i = 1; i < v->n_specials; i++) {
        int32_t id = v->specials[i];
        size_t j = i;
        for (; j > 0 && v->text_len[v->specials[j - 1]] < v->text_len[id]; j--) v->specials[j] = v->specials[j - 1];
        v->specials[j] = id;
    }
}

bpe_status bpe_create(const char *const *tokens, const int32_t *types, uint64_t n_tokens,
                      const char *const *merges, uint64_t n_merges, bpe_vocab **out) {
    if (!out || !tokens || (n_merges && !merges) || n_tokens == 0 || n_tokens > INT32_MAX ||
        n_merges > INT32_MAX)
        return BPE_ERR_ARG;
    *out = NULL;
    bpe_vocab *v = calloc(1, sizeof *v);
    if (!v) return BPE_ERR_NOMEM;
    v->n_tokens = n_tokens;
    v->text = calloc(n_tokens, sizeof *v->text);
    v->text_len = calloc(n_tokens, sizeof *v->text_len);
    v->bytes = calloc(n_tokens, sizeof *v->bytes);
    v->bytes_len = calloc(n_tokens, sizeof *v->bytes_len);
    v->type = calloc(n_tokens, sizeof *v->type);
    v->tok_cap = pow2_at_least(n_tokens);
    v->tok = calloc(v->tok_cap, sizeof *v->tok);
    v->pair_cap = pow2_at_least(n_merges);
    v->pair = malloc(v->pair_cap * sizeof *v->pair);
    v->specials = malloc(n_tokens * sizeof *v->specials);
    if (!v->text || !v->text_len || !v->bytes || !v->bytes_len || !v->type || !v->tok || !v->pair ||
        !v->specials) {
        bpe_destroy(v);
        return BPE_ERR_NOMEM;
    }
    for (size_t i = 0; i < v->pair_cap; i++) v->pair[i].a = -1;
    bytes_to_unicode(v->byte_cp);

    for (uint64_t id = 0; id < n_tokens; id++) {
        const char *s = tokens[id] ? tokens[id] : "";
        size_t n = strlen(s);
        v->text[id] = malloc(n + 1);
        if (!v->text[id]) { bpe_destroy(v); return BPE_ERR_NOMEM; }
        memcpy(v->text[id], s, n + 1);
        v->text_len[id] = n;
        v->type[id] = types ? types[id] : 1;
        bpe_status st = token_bytes(v, s, n, &v->bytes[id], &v->bytes_len[id]);
        if (st) { bpe_destroy(v); return st; }
        if (v->type[id] == BPE_TOKEN_CONTROL && n > 0) v->specials[v->n_specials++] = (int32_t)id;
        if (tok_find(v, s, n) >= 0) continue; /* a duplicate text keeps its first id */
        uint64_t h = hash_bytes(s, n);
        size_t i = h & (v->tok_cap - 1);
        while (v->tok[i].text) i = (i + 1) & (v->tok_cap - 1);
        v->tok[i] = (slot){.key = h, .a = 0, .b = (int32_t)id, .text = v->text[id]};
    }
    int n_bytes = 0;
    for (int b = 0; b < 256; b++) {
        char u[4];
        v->byte_tok[b] = tok_find(v, u, utf8_put(v->byte_cp[b], u)); /* -1: the byte is dropped */
        n_bytes += v->byte_tok[b] >= 0;
    }
    if (n_bytes == 0) { bpe_destroy(v); return BPE_ERR_VOCAB; }
    sort_specials(v);

    char buf[512];
    for (uint64_t r = 0; r < n_merges; r++) {
        const char *m = merges[r];
        const char *sp = m ? strchr(m, ' ') : NULL;
        if (!sp) continue;
        size_t la = (size_t)(sp - m), lb = strlen(sp + 1);
        if (la + lb >= sizeof buf) continue;
        int32_t a = tok_find(v, m, la), b = tok_find(v, sp + 1, lb);
        memcpy(buf, m, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t ab = tok_find(v, buf, la + lb);
        if (a < 0 || b < 0 || ab < 0 || pair_find(v, a, b)) continue; /* the first rank wins */
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t i = mix(key) & (v->pair_cap - 1);
        while (v->pair[i].a >= 0) i = (i + 1) & (v->pair_cap - 1);
        v->pair[i] = (slot){.key = key, .a = (int32_t)r, .b = ab, .text = NULL};
    }
    *out = v;
    return BPE_OK;
}

uint64_t bpe_n_tokens(const bpe_vocab *v) { return v ? v->n_tokens : 0; }

int32_t bpe_token_id(const bpe_vocab *v, const char *text) {
    return v && text ? tok_find(v, text, strlen(text)) : -1;
}

/* ---- pre-tokenizer ---- */

enum { C_SPACE, C_LETTER, C_NUMBER, C_OTHER };

static int cp_class(uint32_t c) {
    if (c < 0x80) {
        if (c == ' ' || (c >= 9 && c <= 13)) return C_SPACE;
        if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return C_LETTER;
        if (c >= '0' && c <= '9') return C_NUMBER;
        return C_OTHER;
    }
    if (c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
        c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000)
        return C_SPACE;
    if (c < 0xC0) {
        if (c == 0xAA || c == 0xB5 || c == 0xBA) return C_LETTER;
        if (c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE)) return C_NUMBER;
        return C_OTHER; /* C1 controls, Latin-1 punctuation and symbols */
    }
    if (c == 0xD7 || c == 0xF7) return C_OTHER;
    if ((c >= 0x2000 && c <= 0x206F) || (c >= 0x3001 && c <= 0x3003)) return C_OTHER;
    /* currency, arrows, mathematical operators, technical, box drawing, shapes, dingbats,
     * emoji: symbols, as far as the pattern cares */
    if ((c >= 0x20A0 && c <= 0x20CF) || (c >= 0x2190 && c <= 0x23FF) || (c >= 0x2500 && c <= 0x27BF) ||
        (c >= 0x2900 && c <= 0x2BFF) || (c >= 0x1F000 && c <= 0x1FAFF))
        return C_OTHER;
    return C_LETTER;
}

typedef struct cpt {
    uint32_t off; /* byte offset */
    uint8_t len, cls;
} cpt;

/* The GPT-2 pattern at p[i] within a segment of n code points (no numbers inside, as they
 * were split off before); returns the match's end. */
static size_t gpt2_match(const cpt *p, const unsigned char *s, size_t i, size_t n) {
    unsigned char c = p[i].len == 1 ? s[p[i].off] : 0;
    if (c == '\'' && i + 1 < n && p[i + 1].len == 1) {
        unsigned char d = s[p[i + 1].off];
        if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
        if (i + 2 < n && p[i + 2].len == 1) {
            unsigned char e = s[p[i + 2].off];
            if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return i + 3;
        }
    }
    size_t j = i;
    if (c == ' ' && i + 1 < n && p[i + 1].cls != C_SPACE) j = i + 1; /* " ?" before a class run */
    int cls = p[j].cls;
    if (cls != C_SPACE) {
        while (j < n && p[j].cls == cls) j++;
        return j;
    }
    while (j < n && p[j].cls == C_SPACE) j++;
    if (j == n || j - i == 1) return j; /* \s+(?!\S) at the end, else \s+ */
    return j - 1;                        /* leave the last space to the next piece */
}

typedef struct sym { int32_t id, next; } sym; /* a list of symbols, merged in place */

typedef struct work {
    cpt *cp;
    size_t cp_cap;
    sym *sy;
    size_t sy_cap;
} work;

typedef struct sink {
    int32_t *ids;
    size_t cap, n;
} sink;

static void emit(sink *o, int32_t id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

/* buf (capacity *cap elements of `size` bytes) with room for n: buf itself, or a copy
 * grown to 2n; NULL when that allocation fails (buf is then kept). */
static void *reserve(void *buf, size_t *cap, size_t n, size_t size) {
    if (n <= *cap) return buf;
    void *p = realloc(buf, 2 * n * size);
    if (p) *cap = 2 * n;
    return p;
}

static bpe_status bpe_word(const bpe_vocab *v, const unsigned char *s, size_t n, work *w, sink *o) {
    sym *y = reserve(w->sy, &w->sy_cap, n, sizeof *y);
    if (!y && n) return BPE_ERR_NOMEM;
    w->sy = y;
    for (size_t i = 0; i < n; i++)
        y[i] = (sym){v->byte_tok[s[i]], i + 1 < n ? (int32_t)i + 1 : -1};
    for (;;) { /* merge the lowest-ranked pair, leftmost first, until none applies */
        int32_t best = -1, best_rank = INT32_MAX, best_id = -1;
        for (int32_t i = 0; i >= 0; i = y[i].next) {
            if (y[i].next < 0) break;
            const slot *e = pair_find(v, y[i].id, y[y[i].next].id);
            if (e && e->a < best_rank) { best = i; best_rank = e->a; best_id = e->b; }
        }
        if (best < 0) break;
        int32_t r = y[best].next;
        y[best].id = best_id;
        y[best].next = y[r].next;
    }
    for (int32_t i = 0; i >= 0; i = y[i].next)
        if (y[i].id >= 0) emit(o, y[i].id); /* a byte the vocabulary lacks is dropped */
    return BPE_OK;
}

/* Pre-tokenizes and encodes a span with no special tokens in it. */
static bpe_status encode_text(const bpe_vocab *v, const unsigned char *s, size_t len, work *w, sink *o) {
    cpt *cp = reserve(w->cp, &w->cp_cap, len, sizeof *cp);
    if (!cp && len) return BPE_ERR_NOMEM;
    w->cp = cp;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t l = utf8_get(s + i, len - i, &c);
        w->cp[n] = (cpt){(uint32_t)i, (uint8_t)(l ? l : 1), (uint8_t)(l ? cp_class(c) : C_OTHER)};
        i += l ? l : 1;
        n++;
    }
    const cpt *p = w->cp;
    for (size_t seg = 0; seg < n;) {
        if (p[seg].cls == C_NUMBER) { /* each number code point is a piece of its own */
            bpe_status st = bpe_word(v, s + p[seg].off, p[seg].len, w, o);
            if (st) return st;
            seg++;
            continue;
        }
        size_t end = seg;
        while (end < n && p[end].cls != C_NUMBER) end++;
        for (size_t i = seg; i < end;) {
            size_t j = gpt2_match(p + seg, s, i - seg, end - seg) + seg;
            size_t b0 = p[i].off, b1 = p[j - 1].off + p[j - 1].len;
            bpe_status st = bpe_word(v, s + b0, b1 - b0, w, o);
            if (st) return st;
            i = j;
        }
        seg = end;
    }
    return BPE_OK;
}

bpe_status bpe_encode(const bpe_vocab *v, const char *text, size_t len, bool special, int32_t *ids,
                      size_t cap, size_t *n) {
    if (!v || !n || (len && !text) || (cap && !ids)) return BPE_ERR_ARG;
    const unsigned char *s = (const unsigned char *)text;
    work w = {0};
    sink o = {ids, cap, 0};
    bpe_status st = BPE_OK;
    size_t start = 0;
    for (size_t i = 0; i <= len && !st; i++) {
        int32_t hit = -1;
        if (special && i < len)
            for (size_t k = 0; k < v->n_specials; k++) {
                int32_t id = v->specials[k];
                size_t l = v->text_len[id];
                if (l <= len - i && v->text[id][0] == (char)s[i] && memcmp(v->text[id], s + i, l) == 0) {
                    hit = id;
                    break;
                }
            }
        if (hit < 0 && i < len) continue;
        if (i > start) st = encode_text(v, s + start, i - start, &w, &o);
        if (hit >= 0 && !st) {
            emit(&o, hit);
            i += v->text_len[hit] - 1;
            start = i + 1;
        }
    }
    free(w.cp);
    free(w.sy);
    *n = o.n;
    if (st) return st;
    return o.n > cap ? BPE_ERR_SPACE : BPE_OK;
}

bpe_status bpe_decode(const bpe_vocab *v, const int32_t *ids, size_t n_ids, char *out, size_t cap,
                      size_t *len) {
    if (!v || !len || (n_ids && !ids) || (cap && !out)) return BPE_ERR_ARG;
    size_t o = 0;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || (uint64_t)ids[i] >= v->n_tokens) return BPE_ERR_ARG;
        size_t l = v->bytes_len[ids[i]];
        if (o + l <= cap) memcpy(out + o, v->bytes[ids[i]], l);
        o += l;
    }
    *len = o;
    return o > cap ? BPE_ERR_SPACE : BPE_OK;
}
