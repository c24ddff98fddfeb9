/* The exported-sequence format's parser (docs/export.md): every count is checked
 * against the bytes that remain before it is used, so a truncated, corrupt or hostile
 * buffer is refused here, before the import allocates anything. Pure: no device, no
 * allocation; the fuzzing entry point. */
#include <string.h>

#include "seq_format.h"
#include "skv_internal.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the export format stores arrays in the host's byte order: little-endian hosts only"
#endif

typedef struct cursor {
    const uint8_t *b;
    size_t end, at; /* end: where the sections stop (the trailer's offset) */
} cursor;

/* Takes count elements of elem bytes; 0 when they do not fit in what remains. */
static int take(cursor *c, uint64_t count, size_t elem, size_t *off)
{
    if (elem && count > (c->end - c->at) / elem)
        return 0;
    *off = c->at;
    c->at += (size_t)count * elem;
    return 1;
}

static int take32(cursor *c, uint32_t *v)
{
    size_t off;
    if (!take(c, 1, 4, &off))
        return 0;
    *v = skvi_le32(c->b + off);
    return 1;
}

static int is_pow2(uint32_t x) { return x && !(x & (x - 1)); }

#define BAD(...) skvi_fail(err, SKV_ERR_INVALID_ARG, "skv_seq_import: " __VA_ARGS__)

static skv_status parse_header(const uint8_t *b, size_t size, skvi_seq_format *f, char *err)
{
    if (size < 12 || memcmp(b, SKVI_SEQ_MAGIC, 8) != 0)
        return BAD("not an skv sequence export (magic)");
    f->version = skvi_le32(b + SKVI_SEQ_OFF_VERSION);
    if (f->version != SKVI_SEQ_VERSION)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED, "skv_seq_import: format version %u; this library reads version %u",
                         f->version, SKVI_SEQ_VERSION);
    if (size < SKVI_SEQ_HEADER_BYTES + SKVI_SEQ_TRAILER_BYTES)
        return BAD("%zu bytes, shorter than the header and checksum (%u)", size,
                   SKVI_SEQ_HEADER_BYTES + SKVI_SEQ_TRAILER_BYTES);
    if (skvi_le32(b + SKVI_SEQ_OFF_HEADER) != SKVI_SEQ_HEADER_BYTES)
        return BAD("header size %u, expected %u", skvi_le32(b + SKVI_SEQ_OFF_HEADER), SKVI_SEQ_HEADER_BYTES);
    f->total = skvi_le64(b + SKVI_SEQ_OFF_TOTAL);
    if (f->total != size)
        return BAD("the buffer holds %zu bytes, the export %llu (truncated or padded)", size,
                   (unsigned long long)f->total);
    uint64_t sum = skvi_hash64(b, size - SKVI_SEQ_TRAILER_BYTES);
    if (sum != skvi_le64(b + size - SKVI_SEQ_TRAILER_BYTES))
        return BAD("checksum mismatch (corrupt buffer)");
    const uint8_t *g = b + SKVI_SEQ_OFF_LAYERS;
    f->layers = skvi_le32(g), f->q_heads = skvi_le32(g + 4), f->kv_heads = skvi_le32(g + 8);
    f->head_dim = skvi_le32(g + 12), f->page_tokens = skvi_le32(g + 16);
    f->tiers = skvi_le32(b + SKVI_SEQ_OFF_TIERS);
    f->dtype = skvi_le32(b + SKVI_SEQ_OFF_DTYPE);
    f->scorer = skvi_le32(b + SKVI_SEQ_OFF_SCORER);
    f->score_window = skvi_le32(b + SKVI_SEQ_OFF_WINDOW);
    f->flags = skvi_le32(b + SKVI_SEQ_OFF_FLAGS);
    f->rotation_seed = skvi_le64(b + SKVI_SEQ_OFF_SEED);
    for (int t = 0; t < SKV_TIER_COUNT; t++) {
        f->codebook[t] = skvi_le64(b + SKVI_SEQ_OFF_CODEBOOK + 8 * t);
        f->page_bytes[t] = skvi_le64(b + SKVI_SEQ_OFF_PAGE_BYTES + 8 * t);
    }
    f->rdr_runs = skvi_le64(b + SKVI_SEQ_OFF_RDR_RUNS);
    f->pages = skvi_le64(b + SKVI_SEQ_OFF_PAGES);
    f->host_pages = skvi_le64(b + SKVI_SEQ_OFF_HOST_PAGES);
    /* the same bounds skv_cache_create puts on a cache */
    if (f->layers == 0 || f->layers > 4096 || f->kv_heads == 0 || f->kv_heads > 1024 || f->q_heads == 0 ||
        f->q_heads % f->kv_heads || f->q_heads / f->kv_heads > 64 ||
        (f->head_dim != 64 && f->head_dim != 128 && f->head_dim != 256) || !is_pow2(f->page_tokens) ||
        f->page_tokens < 16 || f->page_tokens > 256)
        return BAD("geometry out of range (layers %u, q_heads %u, kv_heads %u, head_dim %u, page_tokens %u)", f->layers,
                   f->q_heads, f->kv_heads, f->head_dim, f->page_tokens);
    /* well formed, but not what this library stores: another version's pages */
    if (f->tiers >> SKV_TIER_COUNT)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED, "skv_seq_import: tier mask 0x%x names tiers this library lacks",
                         f->tiers);
    if (f->dtype != SKV_F16)
        return skvi_fail(err, SKV_ERR_UNSUPPORTED, "skv_seq_import: page dtype %u; this library stores pages as F16 (%d)",
                         f->dtype, SKV_F16);
    if (f->scorer > SKV_SCORER_OBSERVED)
        return BAD("scorer %u is not an skv_scorer", f->scorer);
    if (f->flags & ~SKVI_SEQ_FLAGS_ALL)
        return BAD("unknown section flags 0x%x", f->flags);
    int stats = f->scorer == SKV_SCORER_KEYDIFF || f->scorer == SKV_SCORER_MANIFOLD ||
                f->scorer == SKV_SCORER_MANIFOLD_WINDOWED;
    if (((f->flags & SKVI_SEQ_KEY_STATS) != 0) != stats ||
        ((f->flags & SKVI_SEQ_SNAP) != 0) != (f->scorer == SKV_SCORER_SNAPKV) ||
        ((f->flags & SKVI_SEQ_OBSERVED) != 0) != (f->scorer == SKV_SCORER_OBSERVED))
        return BAD("section flags 0x%x do not match scorer %u", f->flags, f->scorer);
    if (f->scorer == SKV_SCORER_MANIFOLD_WINDOWED && f->score_window == 0)
        return BAD("score_window is 0");
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        if (f->page_bytes[t] != skvi_tier_page_bytes((skv_tier)t, f->head_dim, f->page_tokens))
            return skvi_fail(err, SKV_ERR_UNSUPPORTED, "skv_seq_import: tier %d's page is %llu bytes, this library's %llu",
                             t, (unsigned long long)f->page_bytes[t],
                             (unsigned long long)skvi_tier_page_bytes((skv_tier)t, f->head_dim, f->page_tokens));
    return SKV_OK;
}

skv_status skvi_seq_format_parse(const void *buf, size_t size, skvi_seq_format *out, char *err)
{
    if (!buf || !out)
        return BAD("buffer or out is NULL");
    const uint8_t *b = buf;
    skvi_seq_format f;
    memset(&f, 0, sizeof f);
    skv_status st = parse_header(b, size, &f, err);
    if (st != SKV_OK)
        return st;
    const uint32_t L = f.layers, H = f.kv_heads, D = f.head_dim, P = f.page_tokens;
    const size_t n_lists = (size_t)L * H * SKV_TIER_COUNT;
    cursor c = {b, size - SKVI_SEQ_TRAILER_BYTES, SKVI_SEQ_HEADER_BYTES};
    const char *cut = "truncated: a count runs past the end";

    /* per layer: length, next position, RDR mark */
    if (!take(&c, L, 24, &f.off_layers))
        return BAD("%s (layers)", cut);
    for (uint32_t l = 0; l < L; l++) {
        const uint8_t *p = b + f.off_layers + 24 * (size_t)l;
        uint64_t len = skvi_le64(p), next = skvi_le64(p + 8), mark = skvi_le64(p + 16);
        if (len > 0x7FFFFFFFu || next > 0x80000000u || mark > len)
            return BAD("layer %u: length %llu, next position %llu or RDR mark %llu out of range", l,
                       (unsigned long long)len, (unsigned long long)next, (unsigned long long)mark);
    }

    /* lists: tokens, pages, each page's memory */
    f.off_lists = c.at;
    uint64_t pages = 0, held = 0;
    for (size_t i = 0; i < n_lists; i++) {
        uint32_t tokens, n;
        size_t off;
        const uint32_t layer = (uint32_t)(i / ((size_t)H * SKV_TIER_COUNT));
        const skv_tier t = (skv_tier)(i % SKV_TIER_COUNT);
        if (!take32(&c, &tokens) || !take32(&c, &n) || !take(&c, n, 1, &off))
            return BAD("%s (page lists)", cut);
        if (n != (tokens + (uint64_t)P - 1) / P)
            return BAD("list %zu: %u tokens in %u pages of %u", i, tokens, n, P);
        if (n && !(f.tiers & (1u << t)))
            return BAD("list %zu holds pages of tier %d, not in the tier mask 0x%x", i, (int)t, f.tiers);
        for (uint32_t j = 0; j < n; j++) {
            if (b[off + j] > 1)
                return BAD("list %zu page %u: memory %u is neither device (0) nor host (1)", i, j, b[off + j]);
            f.tier_pages[t][b[off + j]]++;
        }
        if (t == SKV_TIER_F16 && tokens % P && b[off + n - 1] != 0)
            return BAD("list %zu: the partly filled F16 page is in host memory", i);
        held = (t == SKV_TIER_F16 ? 0 : held) + tokens;
        if (held > skvi_le64(b + f.off_layers + 24 * (size_t)layer))
            return BAD("list %zu: a head holds more tokens than its layer's length", i);
        pages += n;
    }
    uint64_t host = 0;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        host += f.tier_pages[t][SKV_MEM_HOST];
    if (pages != f.pages || host != f.host_pages)
        return BAD("%llu pages (%llu in host memory) listed, the header says %llu (%llu)", (unsigned long long)pages,
                   (unsigned long long)host, (unsigned long long)f.pages, (unsigned long long)f.host_pages);

    /* pages: every filled slot's position is a position */
    f.off_pages = c.at;
    size_t lc = f.off_lists;
    for (size_t i = 0; i < n_lists; i++) {
        const skv_tier t = (skv_tier)(i % SKV_TIER_COUNT);
        uint32_t tokens = skvi_le32(b + lc), n = skvi_le32(b + lc + 4);
        lc += 8 + n;
        for (uint32_t j = 0; j < n; j++) {
            size_t off;
            if (!take(&c, 1, (size_t)f.page_bytes[t], &off))
                return BAD("%s (pages)", cut);
            uint32_t filled = j + 1 < n || tokens % P == 0 ? P : tokens % P;
            const uint8_t *pos = b + off + f.page_bytes[t] - 4ull * P;
            for (uint32_t k = 0; k < filled; k++)
                if (skvi_le32(pos + 4 * k) > 0x7FFFFFFEu)
                    return BAD("list %zu page %u slot %u: position %d", i, j, k, (int32_t)skvi_le32(pos + 4 * k));
        }
    }

    if (f.flags & SKVI_SEQ_KEY_STATS) { /* pending positions per layer, then sums per (layer, head) */
        f.off_stats = c.at;
        size_t lo = f.off_lists; /* the lists, walked in order: [layer][head][tier] */
        for (uint32_t l = 0; l < L; l++) {
            uint32_t n;
            size_t off;
            if (!take32(&c, &n) || !take(&c, n, 4, &off))
                return BAD("%s (key statistics)", cut);
            for (uint32_t k = 0; k < n; k++)
                if (skvi_le32(b + off + 4 * (size_t)k) > 0x7FFFFFFEu)
                    return BAD("layer %u: pending position %d", l, (int32_t)skvi_le32(b + off + 4 * (size_t)k));
            for (uint32_t h = 0; h < H; h++) /* the pending tokens are the tail of each F16 list */
                for (int t = 0; t < SKV_TIER_COUNT; t++) {
                    if (t == SKV_TIER_F16 && n > skvi_le32(b + lo))
                        return BAD("layer %u: %u pending tokens, head %u holds %u at F16", l, n, h, skvi_le32(b + lo));
                    lo += 8 + skvi_le32(b + lo + 4);
                }
        }
        for (size_t i = 0; i < (size_t)L * H; i++) {
            uint32_t nw;
            size_t off;
            if (!take32(&c, &nw) || !take(&c, nw, (size_t)D * 16 + 12, &off))
                return BAD("%s (key statistics)", cut);
            if (f.scorer != SKV_SCORER_MANIFOLD_WINDOWED && nw > 1)
                return BAD("(layer, head) %zu: %u statistics windows, the scorer keeps one", i, nw);
            for (uint32_t w = 0; w < nw; w++) { /* the windows that hold tokens, ascending */
                const uint32_t win = skvi_le32(b + off + 4 * (size_t)w);
                if ((w && win <= skvi_le32(b + off + 4 * (size_t)(w - 1))) ||
                    (f.scorer != SKV_SCORER_MANIFOLD_WINDOWED && win != 0))
                    return BAD("(layer, head) %zu: statistics window %u is %u, not ascending", i, w, win);
            }
        }
    }
    if (f.flags & SKVI_SEQ_SNAP) {
        f.off_snap = c.at;
        for (uint32_t l = 0; l < L; l++) {
            uint32_t n;
            size_t off;
            if (!take32(&c, &n) || n > 4096 || !take(&c, n, (size_t)f.q_heads * D * 4 + 4, &off))
                return BAD("%s, or over 4096 queries (observation windows)", cut);
        }
    }
    if (f.flags & SKVI_SEQ_OBSERVED) {
        f.off_obs = c.at;
        for (uint32_t l = 0; l < L; l++) {
            uint32_t cap, steps;
            size_t off, from;
            if (!take32(&c, &cap) || !take32(&c, &steps) || cap > 0x7FFFFFFFu || !take(&c, cap, (size_t)H * 4, &off) ||
                !take(&c, cap, 4, &from))
                return BAD("%s (observed attention)", cut);
            for (uint32_t p = 0; p < cap; p++)
                if (skvi_le32(b + from + 4 * (size_t)p) > steps)
                    return BAD("layer %u: position %u arrived after step %u of %u", l, p,
                               skvi_le32(b + from + 4 * (size_t)p), steps);
        }
    }
    if (f.flags & SKVI_SEQ_KEPT) {
        f.off_kept = c.at;
        size_t lo = f.off_lists;
        for (size_t i = 0; i < n_lists; i++) {
            uint32_t n;
            size_t off;
            if (!take32(&c, &n) || !take(&c, n, 12, &off))
                return BAD("%s (kept scores)", cut);
            if (n > skvi_le32(b + lo))
                return BAD("list %zu: %u kept scores for %u tokens", i, n, skvi_le32(b + lo));
            lo += 8 + skvi_le32(b + lo + 4);
        }
    }
    if (c.at != c.end)
        return BAD("%zu bytes after the last section", c.end - c.at);
    f.off_end = c.at;
    *out = f;
    return SKV_OK;
}
