/* Sequence export and import (skv_seq_export / skv_seq_import, docs/export.md): round
 * trips are exact (decode output bit for bit, positions, lengths, pages per tier and
 * memory) for F16, ADA tiers, host-tier pages and RDR-compressed mixed-tier sequences
 * of awkward lengths, into another cache of the same context and into a cache on
 * another context; a later skv_compress on the import equals the original's; every
 * truncation, every single-byte corruption, hostile fields behind a valid checksum,
 * mismatched caches and allocation failures are refused with the cache unchanged. */
#include "test_util.h"
#include "skv/skv_cl.h"
#include "seq_format.h"
#include "skv_internal.h"

static skv_context *ctx;
static counting_allocator counter;

TEST_COUNTING_SUITE_SETUP(ctx, counter)

enum { L = 2, QH = 4, H = 2, D = 64, P = 16 };

static skv_cache_desc base_desc(void)
{
    skv_cache_desc d;
    skv_cache_desc_init(&d);
    d.layers = L, d.q_heads = QH, d.kv_heads = H, d.head_dim = D, d.page_tokens = P;
    d.device_budget_bytes = 32u << 20;
    d.host_budget_bytes = 8u << 20;
    return d;
}

static skv_cache *make(skv_context *on, const skv_cache_desc *d)
{
    skv_cache *c = NULL;
    assert_ok(skv_cache_create(on, d, &c));
    return c;
}

static void append_n(skv_cache *c, skv_seq_id s, uint32_t layer, uint32_t n, int32_t first, uint64_t seed)
{
    test_rng r = {seed};
    float *k = malloc((size_t)n * H * D * 4), *v = malloc((size_t)n * H * D * 4);
    int32_t *pos = malloc((size_t)n * 4);
    for (uint32_t i = 0; i < n * H * D; i++) {
        k[i] = test_gauss(&r) + (i % D == 1 ? 3.0f : 0.0f);
        v[i] = test_gauss(&r);
    }
    for (uint32_t t = 0; t < n; t++)
        pos[t] = first + (int32_t)t;
    assert_ok(skv_append(c, s, layer, n, SKV_F32, k, v, pos));
    free(k), free(v), free(pos);
}

/* Everything a round trip must keep: lengths, positions, pages per tier and memory,
 * host pages, and the decode output of every layer for a fixed query. */
typedef struct view {
    uint64_t len[L], host, tokens[SKV_TIER_COUNT];
    int32_t pos[L][H][1024];
    size_t n_pos[L][H];
    float out[L][QH * D];
} view;

static void look(skv_cache *c, skv_seq_id s, view *v)
{
    memset(v, 0, sizeof *v);
    float q[QH * D];
    test_rng r = {99};
    for (int i = 0; i < QH * D; i++)
        q[i] = test_gauss(&r);
    for (uint32_t l = 0; l < L; l++) {
        assert_ok(skv_seq_length(c, s, l, &v->len[l]));
        for (uint32_t h = 0; h < H; h++)
            assert_ok(skv_seq_positions(c, s, l, h, v->pos[l][h], 1024, &v->n_pos[l][h]));
        assert_ok(skv_attention_decode(c, l, &s, 1, SKV_F32, q, 0.125f, SKV_F32, v->out[l]));
    }
    assert_ok(skv_seq_host_pages(c, s, &v->host));
}

static void same_view(const view *a, const view *b)
{
    assert_memory_equal(a->len, b->len, sizeof a->len);
    assert_int_equal(a->host, b->host);
    assert_memory_equal(a->n_pos, b->n_pos, sizeof a->n_pos);
    assert_memory_equal(a->pos, b->pos, sizeof a->pos);
    assert_memory_equal(a->out, b->out, sizeof a->out); /* bit for bit */
}

/* Pages in use per pool and live sequences: what a refused import must not change. */
typedef struct usage {
    uint64_t used[SKV_TIER_COUNT][SKV_MEM_COUNT];
    uint32_t sequences;
} usage;

static usage usage_of(skv_cache *c)
{
    usage u;
    memset(&u, 0, sizeof u);
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(c, &st));
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int m = 0; m < SKV_MEM_COUNT; m++)
            u.used[t][m] = st.pools[t][m].pages_used;
    u.sequences = st.sequences;
    return u;
}

static uint8_t *export_of(skv_cache *c, skv_seq_id s, size_t *size)
{
    assert_ok(skv_seq_export(c, s, NULL, 0, size));
    uint8_t *buf = malloc(*size);
    size_t n = 0;
    assert_int_equal(skv_seq_export(c, s, buf, *size - 1, &n), SKV_ERR_INVALID_ARG); /* cap short */
    assert_int_equal(n, *size);
    assert_ok(skv_seq_export(c, s, buf, *size, &n));
    assert_int_equal(n, *size);
    return buf;
}

/* Exports s of src, imports it into dst, and compares the two. */
static skv_seq_id round_trip(skv_cache *src, skv_seq_id s, skv_cache *dst)
{
    size_t size;
    uint8_t *buf = export_of(src, s, &size);
    size_t again;
    uint8_t *buf2 = export_of(src, s, &again); /* exporting changes nothing: the same bytes */
    assert_int_equal(size, again);
    assert_memory_equal(buf, buf2, size);
    free(buf2);
    skv_seq_id t;
    assert_ok(skv_seq_import(dst, buf, size, &t));
    free(buf);
    view a, b;
    look(src, s, &a);
    look(dst, t, &b);
    same_view(&a, &b);
    skv_cache_stats sa = {.struct_size = sizeof sa}, sb = {.struct_size = sizeof sb};
    assert_ok(skv_cache_get_stats(src, &sa));
    assert_ok(skv_cache_get_stats(dst, &sb));
    return t;
}

static skv_context *other_context(void)
{
    skv_context_desc d;
    skv_context_desc_init(&d);
    d.device = getenv("SKV_TEST_DEVICE") && getenv("SKV_TEST_DEVICE")[0] ? getenv("SKV_TEST_DEVICE") : "cpu";
    skv_context *c = NULL;
    assert_ok(skv_context_create(&d, &c));
    return c;
}

static void test_round_trip_f16(void **state)
{
    (void)state;
    skv_cache_desc d = base_desc();
    skv_cache *a = make(ctx, &d), *b = make(ctx, &d);
    skv_seq_id s;
    assert_ok(skv_seq_create(a, &s));
    append_n(a, s, 0, 150, 0, 1); /* 9 pages and 6 tokens */
    append_n(a, s, 1, 77, 0, 2);  /* per-layer lengths differ */
    append_n(a, s, 1, 3, 77, 3);
    skv_seq_id t = round_trip(a, s, b);
    /* the import is a sequence like any: it appends into its partly filled page */
    append_n(a, s, 0, 21, 150, 4);
    append_n(b, t, 0, 21, 150, 4);
    view va, vb;
    look(a, s, &va);
    look(b, t, &vb);
    same_view(&va, &vb);
    /* and into a cache on another context */
    skv_context *ctx2 = other_context();
    skv_cache *c2 = make(ctx2, &d);
    round_trip(a, s, c2);
    /* the buffer needs no alignment */
    size_t size0;
    assert_ok(skv_seq_export(a, s, NULL, 0, &size0));
    uint8_t *odd = malloc(size0 + 3);
    assert_ok(skv_seq_export(a, s, odd + 3, size0, &size0));
    skv_seq_id o;
    assert_ok(skv_seq_import(b, odd + 3, size0, &o));
    free(odd);
    view vo;
    look(a, s, &va);
    look(b, o, &vo);
    same_view(&va, &vo);
    /* an empty sequence round-trips too */
    skv_seq_id e;
    assert_ok(skv_seq_create(a, &e));
    size_t size;
    uint8_t *buf = export_of(a, e, &size);
    skv_seq_id f;
    assert_ok(skv_seq_import(c2, buf, size, &f));
    uint64_t len;
    assert_ok(skv_seq_length(c2, f, 1, &len));
    assert_int_equal(len, 0);
    free(buf);
    skv_cache_destroy(c2);
    skv_context_destroy(ctx2);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

/* ADA pages of two tiers, F16 pages, and pages offloaded to the host tier. */
static void test_round_trip_ada_host(void **state)
{
    (void)state;
    skv_cache_desc d = base_desc();
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A4V8) | (1u << SKV_TIER_A3V4);
    d.rotation_seed = 7;
    skv_cache *a = make(ctx, &d), *b = make(ctx, &d);
    skv_seq_id s;
    assert_ok(skv_seq_create(a, &s));
    for (uint32_t l = 0; l < L; l++)
        append_n(a, s, l, 203 - 40 * l, 0, 10 + l);
    assert_ok(skv_seq_quantize(a, s, 0, 48, SKV_TIER_A4V8));
    assert_ok(skv_seq_quantize(a, s, 0, 32, SKV_TIER_A3V4));
    assert_ok(skv_seq_offload_head(a, s, 0, 1, 0, 64)); /* host pages of F16 and ADA lists */
    assert_ok(skv_seq_offload_head(a, s, 1, 0, 0, 16));
    uint64_t host;
    assert_ok(skv_seq_host_pages(a, s, &host));
    assert_true(host > 0);
    skv_seq_id t = round_trip(a, s, b);
    /* the imported host pages come back like the original's */
    assert_ok(skv_seq_fetch(a, s, 0, 1u << 20));
    assert_ok(skv_seq_fetch(b, t, 0, 1u << 20));
    view va, vb;
    look(a, s, &va);
    look(b, t, &vb);
    same_view(&va, &vb);
    /* on another context */
    skv_context *ctx2 = other_context();
    skv_cache *c2 = make(ctx2, &d);
    round_trip(a, s, c2);
    skv_cache_destroy(c2);
    skv_context_destroy(ctx2);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

/* The scorer's view of both sequences: the imported state scores as the original's. */
static void same_scores(skv_cache *a, skv_seq_id s, skv_cache *b, skv_seq_id t)
{
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++) {
            float sa[1024], sb[1024];
            size_t na, nb;
            assert_ok(skv_seq_scores(a, s, l, h, sa, 1024, &na));
            assert_ok(skv_seq_scores(b, t, l, h, sb, 1024, &nb));
            assert_int_equal(na, nb);
            assert_memory_equal(sa, sb, na * sizeof *sa);
        }
}

static void observe(skv_cache *c, skv_seq_id s)
{
    for (uint32_t l = 0; l < L; l++) {
        float q[3 * QH * D];
        test_rng r = {40 + l};
        for (int i = 0; i < 3 * QH * D; i++)
            q[i] = test_gauss(&r);
        int32_t pos[3] = {228, 229, 230};
        assert_ok(skv_seq_observe_window(c, s, l, 3, SKV_F32, q, pos));
    }
}

/* RDR: a compressed mixed-tier sequence with pending key statistics round-trips, and
 * a later compression of the import equals the original's. */
static void rdr_case(skv_scorer scorer)
{
    skv_cache_desc d = base_desc();
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4) | (1u << SKV_TIER_A2V2);
    d.retention = SKV_RETENTION_RDR;
    d.scorer = scorer;
    d.score_window = 64;
    d.budget_ratio = 0.35f;
    d.recent_window = 32;
    d.slack = 1u << 30; /* compression only when asked */
    d.score_refresh = 3;
    skv_cache *a = make(ctx, &d), *b = make(ctx, &d);
    skv_seq_id s;
    assert_ok(skv_seq_create(a, &s));
    for (uint32_t l = 0; l < L; l++)
        append_n(a, s, l, 231 + 17 * l, 0, 20 + l);
    if (scorer == SKV_SCORER_SNAPKV)
        observe(a, s);
    assert_ok(skv_compress(a, s));
    for (uint32_t l = 0; l < L; l++) /* tokens not yet in the statistics */
        append_n(a, s, l, 45, 231 + 17 * (int32_t)l, 30 + l);
    skv_cache_stats st = {.struct_size = sizeof st};
    assert_ok(skv_cache_get_stats(a, &st));
    assert_true(st.tokens[SKV_TIER_A3V4] + st.tokens[SKV_TIER_A2V2] > 0); /* mixed tiers */
    skv_seq_id t = round_trip(a, s, b); /* decodes the same query on both: the same query model */
    same_scores(a, s, b, t); /* statistics, windows, observed attention */
    if (scorer == SKV_SCORER_SNAPKV) /* the window is imported; the query energy it taught is the cache's */
        observe(b, t);
    for (int round = 0; round < 2; round++) {
        assert_ok(skv_compress(a, s));
        assert_ok(skv_compress(b, t));
        view va, vb;
        look(a, s, &va);
        look(b, t, &vb);
        same_view(&va, &vb);
        same_scores(a, s, b, t);
        for (uint32_t l = 0; l < L; l++) {
            append_n(a, s, l, 50, 400 + 50 * round, 50 + l);
            append_n(b, t, l, 50, 400 + 50 * round, 50 + l);
        }
    }
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

static void test_rdr_keydiff(void **state)
{
    (void)state;
    rdr_case(SKV_SCORER_KEYDIFF);
}

static void test_rdr_other_scorers(void **state)
{
    (void)state;
    static const skv_scorer scorers[] = {SKV_SCORER_MANIFOLD_WINDOWED, SKV_SCORER_SNAPKV, SKV_SCORER_OBSERVED,
                                         SKV_SCORER_KNORM, SKV_SCORER_MANIFOLD};
    for (size_t i = 0; i < sizeof scorers / sizeof scorers[0]; i++) {
        printf("scorer %d\n", (int)scorers[i]);
        rdr_case(scorers[i]);
    }
}

/* A small export to break: F16 and A3V4 pages, keydiff statistics. */
static skv_cache *small_source(skv_seq_id *s, const skv_cache_desc *d)
{
    skv_cache *a = make(ctx, d);
    assert_ok(skv_seq_create(a, s));
    append_n(a, *s, 0, 40, 0, 60);
    append_n(a, *s, 1, 19, 0, 61);
    assert_ok(skv_seq_quantize(a, *s, 0, 16, SKV_TIER_A3V4));
    return a;
}

static skv_cache_desc small_desc(void)
{
    skv_cache_desc d = base_desc();
    d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A3V4);
    d.scorer = SKV_SCORER_KEYDIFF;
    return d;
}

static void reseal(uint8_t *buf, size_t size)
{
    skvi_put64(buf + size - 8, skvi_hash64(buf, size - 8));
}

static void refused(skv_cache *c, const uint8_t *buf, size_t size, skv_status want, const char *what, size_t i)
{
    usage before = usage_of(c);
    skv_seq_id t = 12345;
    skv_status st = skv_seq_import(c, buf, size, &t);
    if (st != want)
        fail_msg("%s %zu: %s (%s), expected %s", what, i, skv_status_str(st), skv_last_error(), skv_status_str(want));
    assert_int_equal(t, 12345);
    assert_true(skv_last_error()[0] != '\0');
    usage after = usage_of(c);
    assert_memory_equal(&before, &after, sizeof before);
}

static void test_truncated_and_corrupt(void **state)
{
    (void)state;
    skv_cache_desc d = small_desc();
    skv_seq_id s;
    skv_cache *a = small_source(&s, &d), *b = make(ctx, &d);
    skv_seq_id keep; /* the destination holds a sequence already */
    assert_ok(skv_seq_create(b, &keep));
    append_n(b, keep, 0, 20, 0, 3);
    size_t size;
    uint8_t *buf = export_of(a, s, &size);
    uint8_t *bad = malloc(size);
    for (size_t n = 0; n < size; n++) { /* every truncation */
        memcpy(bad, buf, n);
        refused(b, bad, n, SKV_ERR_INVALID_ARG, "truncated to", n);
    }
    for (size_t i = 0; i < size; i++) { /* every single-byte corruption */
        memcpy(bad, buf, size);
        bad[i] ^= (uint8_t)(1u << (i % 8));
        skv_status want = i >= 8 && i < 12 ? SKV_ERR_UNSUPPORTED : SKV_ERR_INVALID_ARG; /* the version */
        refused(b, bad, size, want, "byte", i);
    }
    /* hostile: every byte outside the pages changed behind a valid checksum. The import
     * is refused with the cache unchanged, or (a field it may take: a seed without ADA,
     * a counter, a statistic) succeeds; never a crash or a leak. */
    skvi_seq_format f;
    assert_ok(skvi_seq_format_parse(buf, size, &f, NULL));
    int accepted = 0, refusals = 0;
    for (size_t i = 8; i < size - 8; i++) {
        if (i >= f.off_pages && i < f.off_stats)
            continue;
        static const uint8_t values[] = {0x00, 0xFF, 0x7F, 0x80, 0x01};
        for (size_t v = 0; v < sizeof values; v++) {
            memcpy(bad, buf, size);
            if (bad[i] == values[v])
                continue;
            bad[i] = values[v];
            reseal(bad, size);
            usage before = usage_of(b);
            skv_seq_id t;
            skv_status st = skv_seq_import(b, bad, size, &t);
            if (st == SKV_OK) {
                accepted++;
                assert_ok(skv_seq_free(b, t));
            } else {
                refusals++;
                assert_true(st == SKV_ERR_INVALID_ARG || st == SKV_ERR_UNSUPPORTED || st == SKV_ERR_OUT_OF_MEMORY);
            }
            usage after = usage_of(b);
            assert_memory_equal(&before, &after, sizeof before);
        }
    }
    printf("hostile fields: %d refused, %d harmless accepted\n", refusals, accepted);
    /* random bytes anywhere, pages included (a few at a time, resealed) */
    test_rng r = {77};
    accepted = refusals = 0;
    for (int it = 0; it < 400; it++) {
        memcpy(bad, buf, size);
        for (uint32_t k = 1 + rng_u32(&r) % 4; k-- > 0;)
            bad[8 + rng_u32(&r) % (size - 16)] = (uint8_t)rng_u32(&r);
        reseal(bad, size);
        usage before = usage_of(b);
        skv_seq_id t;
        skv_status st = skv_seq_import(b, bad, size, &t);
        if (st == SKV_OK) {
            accepted++;
            float q[QH * D] = {0};
            float out[QH * D];
            for (uint32_t l = 0; l < L; l++) /* whatever the pages hold, decode runs */
                (void)skv_attention_decode(b, l, &t, 1, SKV_F32, q, 0.125f, SKV_F32, out);
            assert_ok(skv_seq_free(b, t));
        } else {
            refusals++;
        }
        usage after = usage_of(b);
        assert_memory_equal(&before, &after, sizeof before);
    }
    printf("random bytes: %d refused, %d accepted\n", refusals, accepted);
    /* a page position that is no position, behind a valid checksum */
    memcpy(bad, buf, size);
    skvi_put32(bad + f.off_pages + f.page_bytes[SKV_TIER_F16] - 4 * P, 0xFFFFFFFFu);
    reseal(bad, size);
    refused(b, bad, size, SKV_ERR_INVALID_ARG, "negative position", 0);
    /* bytes after the last section */
    uint8_t *longer = calloc(1, size + 8);
    memcpy(longer, buf, size);
    skvi_put64(longer + 16, size + 8);
    memmove(longer + size, longer + size - 8, 8);
    reseal(longer, size + 8);
    refused(b, longer, size + 8, SKV_ERR_INVALID_ARG, "padded", 0);
    free(longer);
    /* what is refused says why */
    assert_int_equal(skv_seq_import(b, buf, size - 1, &keep), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "truncated"));
    memcpy(bad, buf, size);
    bad[size / 2] ^= 1;
    assert_int_equal(skv_seq_import(b, bad, size, &keep), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "checksum"));
    /* and the original buffer still imports */
    skv_seq_id t;
    assert_ok(skv_seq_import(b, buf, size, &t));
    free(bad);
    free(buf);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

static void test_mismatch_refused(void **state)
{
    (void)state;
    skv_cache_desc d = small_desc();
    skv_seq_id s;
    skv_cache *a = small_source(&s, &d);
    assert_ok(skv_seq_offload_head(a, s, 0, 0, 0, 16)); /* a host page */
    size_t size;
    uint8_t *buf = export_of(a, s, &size);
    struct {
        const char *what;
        skv_cache_desc d;
    } cases[8];
    int n = 0;
    cases[n].what = "head_dim", cases[n].d = d, cases[n++].d.head_dim = 128;
    cases[n].what = "page_tokens", cases[n].d = d, cases[n++].d.page_tokens = 32;
    cases[n].what = "layers", cases[n].d = d, cases[n++].d.layers = 3;
    cases[n].what = "kv_heads", cases[n].d = d, cases[n].d.kv_heads = 4, cases[n++].d.q_heads = 4;
    cases[n].what = "tiers", cases[n].d = d, cases[n++].d.tiers = (1u << SKV_TIER_F16) | (1u << SKV_TIER_A2V2);
    cases[n].what = "rotation_seed", cases[n].d = d, cases[n++].d.rotation_seed = 1;
    cases[n].what = "scorer", cases[n].d = d, cases[n++].d.scorer = SKV_SCORER_MANIFOLD;
    cases[n].what = "host tier", cases[n].d = d, cases[n++].d.host_budget_bytes = 0;
    for (int i = 0; i < n; i++) {
        skv_cache *b = make(ctx, &cases[i].d);
        usage before = usage_of(b);
        skv_seq_id t;
        skv_status st = skv_seq_import(b, buf, size, &t);
        if (st != SKV_ERR_UNSUPPORTED)
            fail_msg("%s: %s (%s)", cases[i].what, skv_status_str(st), skv_last_error());
        printf("%s: %s\n", cases[i].what, skv_last_error());
        usage after = usage_of(b);
        assert_memory_equal(&before, &after, sizeof before);
        skv_cache_destroy(b);
    }
    /* another format version (behind a valid checksum) */
    skv_cache *b = make(ctx, &d);
    skv_seq_id t;
    skvi_put32(buf + 8, 2);
    reseal(buf, size);
    refused(b, buf, size, SKV_ERR_UNSUPPORTED, "version", 2);
    assert_int_equal(skv_seq_import(b, buf, size, &t), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "format version 2"));
    /* another codebook for the ADA pages (another skv build), another page layout */
    skvi_put32(buf + 8, 1);
    uint64_t book = skvi_le64(buf + SKVI_SEQ_OFF_CODEBOOK + 8 * SKV_TIER_A3V4);
    skvi_put64(buf + SKVI_SEQ_OFF_CODEBOOK + 8 * SKV_TIER_A3V4, book ^ 1);
    reseal(buf, size);
    assert_int_equal(skv_seq_import(b, buf, size, &t), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "codebook"));
    skvi_put64(buf + SKVI_SEQ_OFF_CODEBOOK + 8 * SKV_TIER_A3V4, book);
    uint64_t pb = skvi_le64(buf + SKVI_SEQ_OFF_PAGE_BYTES + 8 * SKV_TIER_A3V4);
    skvi_put64(buf + SKVI_SEQ_OFF_PAGE_BYTES + 8 * SKV_TIER_A3V4, pb + 64);
    reseal(buf, size);
    assert_int_equal(skv_seq_import(b, buf, size, &t), SKV_ERR_UNSUPPORTED);
    skvi_put64(buf + SKVI_SEQ_OFF_PAGE_BYTES + 8 * SKV_TIER_A3V4, pb);
    /* a page dtype, or a tier, this library does not store */
    skvi_put32(buf + 8, 1);
    skvi_put32(buf + SKVI_SEQ_OFF_DTYPE, SKV_BF16);
    reseal(buf, size);
    assert_int_equal(skv_seq_import(b, buf, size, &t), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "dtype"));
    skvi_put32(buf + SKVI_SEQ_OFF_DTYPE, SKV_F16);
    skvi_put32(buf + SKVI_SEQ_OFF_TIERS, skvi_le32(buf + SKVI_SEQ_OFF_TIERS) | 0x10);
    reseal(buf, size);
    assert_int_equal(skv_seq_import(b, buf, size, &t), SKV_ERR_UNSUPPORTED);
    skvi_put32(buf + SKVI_SEQ_OFF_TIERS, skvi_le32(buf + SKVI_SEQ_OFF_TIERS) & 0xF);
    /* a scorer that keeps no state takes any export */
    skv_cache_desc k = d;
    k.scorer = SKV_SCORER_KNORM;
    skv_cache *c = make(ctx, &k);
    skvi_put32(buf + 8, 1);
    reseal(buf, size);
    assert_ok(skv_seq_import(c, buf, size, &t));
    /* HeteroCache sequences are not exported */
    skv_cache_desc hd = d;
    hd.retention = SKV_RETENTION_RDR, hd.budget_ratio = 0.5f;
    skv_cache *hc = make(ctx, &hd);
    skv_head_category cat[L * H];
    uint32_t pivot[L * H];
    for (uint32_t i = 0; i < L * H; i++)
        cat[i] = SKV_HEAD_ANCHOR, pivot[i] = i % H;
    skv_hetero_profile *prof;
    assert_ok(skv_hetero_profile_create(L, H, cat, pivot, NULL, &prof));
    skv_seq_id hs;
    assert_ok(skv_seq_create(hc, &hs));
    skv_hetero_desc hdesc;
    skv_hetero_desc_init(&hdesc);
    assert_ok(skv_seq_hetero(hc, hs, prof, &hdesc));
    skv_hetero_profile_free(prof);
    size_t hsize;
    assert_int_equal(skv_seq_export(hc, hs, NULL, 0, &hsize), SKV_ERR_UNSUPPORTED);
    assert_non_null(strstr(skv_last_error(), "HeteroCache"));
    skv_cache_destroy(hc);
    skv_cache_destroy(c);
    free(buf);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    skv_cache_desc d = small_desc();
    d.retention = SKV_RETENTION_RDR, d.budget_ratio = 0.5f, d.recent_window = 16, d.slack = 1u << 30;
    skv_seq_id s;
    skv_cache *a = small_source(&s, &d);
    append_n(a, s, 0, 60, 40, 62);
    assert_ok(skv_compress(a, s)); /* kept scores and statistics to import */
    append_n(a, s, 0, 5, 100, 63);
    skv_cache *b = make(ctx, &d);
    size_t size;
    uint8_t *buf = export_of(a, s, &size);
    skv_seq_id warm; /* the pools' bookkeeping and the sequence table exist before counting */
    assert_ok(skv_seq_import(b, buf, size, &warm));
    assert_ok(skv_seq_free(b, warm));
    int failures = 0;
    for (long k = 1;; k++) {
        usage before = usage_of(b);
        long live = counter.live;
        counter.calls = 0;
        counter.fail_at = k;
        skv_seq_id t;
        skv_status st = skv_seq_import(b, buf, size, &t);
        counter.fail_at = 0;
        if (st == SKV_OK) {
            view va, vb;
            look(a, s, &va);
            look(b, t, &vb);
            same_view(&va, &vb);
            break;
        }
        if (st != SKV_ERR_OUT_OF_MEMORY)
            fail_msg("allocation %ld failing: %s (%s)", k, skv_status_str(st), skv_last_error());
        failures++;
        usage after = usage_of(b);
        assert_memory_equal(&before, &after, sizeof before);
        assert_int_equal(counter.live, live); /* nothing leaked, nothing kept */
    }
    printf("import: %d injected allocation failures, then success\n", failures);
    assert_true(failures > 5);
    /* the cl_mem forms stage through host memory: their failure changes nothing either */
    cl_context clc;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, NULL, NULL));
    cl_int e;
    cl_mem m = clCreateBuffer(clc, CL_MEM_READ_WRITE, size + 64, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    size_t got;
    counter.calls = 0, counter.fail_at = 1;
    assert_int_equal(skv_seq_export_cl(a, s, m, 64, size, &got, 0, NULL, NULL), SKV_ERR_OUT_OF_MEMORY);
    counter.calls = 0, counter.fail_at = 1;
    skv_seq_id t;
    usage before = usage_of(b);
    assert_int_equal(skv_seq_import_cl(b, m, 64, size, &t, 0, NULL, NULL), SKV_ERR_OUT_OF_MEMORY);
    counter.fail_at = 0;
    usage after = usage_of(b);
    assert_memory_equal(&before, &after, sizeof before);
    clReleaseMemObject(m);
    free(buf);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

/* The caller's cl_mem: export at an offset, import from it, events. */
static void test_cl_mem(void **state)
{
    (void)state;
    skv_cache_desc d = small_desc();
    skv_seq_id s;
    skv_cache *a = small_source(&s, &d), *b = make(ctx, &d);
    cl_context clc;
    cl_command_queue q;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, &q, NULL));
    size_t size;
    assert_ok(skv_seq_export_cl(a, s, NULL, 0, 0, &size, 0, NULL, NULL));
    cl_int e;
    cl_mem m = clCreateBuffer(clc, CL_MEM_READ_WRITE, size + 100, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    size_t got;
    assert_int_equal(skv_seq_export_cl(a, s, m, 101, size, &got, 0, NULL, NULL), SKV_ERR_INVALID_ARG); /* past the end */
    cl_event ev = NULL, marker = NULL;
    assert_ok(skv_seq_export_cl(a, s, m, 100, size, &got, 0, NULL, &ev));
    assert_int_equal(got, size);
    assert_non_null(ev);
    skv_seq_id t;
    assert_ok(skv_seq_import_cl(b, m, 100, size, &t, 1, &ev, &marker));
    assert_non_null(marker);
    assert_int_equal(clWaitForEvents(1, &marker), CL_SUCCESS);
    clReleaseEvent(ev);
    clReleaseEvent(marker);
    /* the bytes equal the host export */
    uint8_t *host = malloc(size), *dev = malloc(size);
    assert_ok(skv_seq_export(a, s, host, size, &got));
    assert_int_equal(clEnqueueReadBuffer(q, m, CL_TRUE, 100, size, dev, 0, NULL, NULL), CL_SUCCESS);
    assert_memory_equal(host, dev, size);
    view va, vb;
    look(a, s, &va);
    look(b, t, &vb);
    same_view(&va, &vb);
    /* a truncated device buffer is refused like a host one */
    usage before = usage_of(b);
    assert_int_equal(skv_seq_import_cl(b, m, 100, size - 9, &t, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    usage after = usage_of(b);
    assert_memory_equal(&before, &after, sizeof before);
    free(host), free(dev);
    clReleaseMemObject(m);
    skv_cache_destroy(a);
    skv_cache_destroy(b);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    skv_cache_desc d = base_desc();
    skv_cache *a = make(ctx, &d);
    size_t size;
    skv_seq_id t;
    uint8_t byte = 0;
    assert_int_equal(skv_seq_export(NULL, 0, NULL, 0, &size), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_export(a, 0, NULL, 0, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_export(a, 3, NULL, 0, &size), SKV_ERR_INVALID_ARG); /* no such sequence */
    assert_int_equal(skv_seq_import(NULL, &byte, 1, &t), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import(a, NULL, 1, &t), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import(a, &byte, 1, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import(a, &byte, 0, &t), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import(a, &byte, 1, &t), SKV_ERR_INVALID_ARG);
    /* the cl_mem forms: NULLs, wait lists that disagree, a buffer of another context */
    skv_seq_id s;
    assert_ok(skv_seq_create(a, &s));
    cl_context clc;
    assert_ok(skv_context_cl_objects(ctx, &clc, NULL, NULL, NULL));
    cl_int e;
    cl_mem m = clCreateBuffer(clc, CL_MEM_READ_WRITE, 4096, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    cl_event ev = NULL;
    assert_int_equal(skv_seq_export_cl(NULL, s, m, 0, 4096, &size, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_export_cl(a, s, m, 0, 4096, NULL, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_export_cl(a, s, m, 0, 4096, &size, 1, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_export_cl(a, s, m, 0, 4096, &size, 0, &ev, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import_cl(NULL, m, 0, 100, &t, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import_cl(a, NULL, 0, 100, &t, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import_cl(a, m, 0, 100, NULL, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_int_equal(skv_seq_import_cl(a, m, 4000, 100, &t, 0, NULL, NULL), SKV_ERR_INVALID_ARG); /* past the end */
    skv_context *ctx2 = other_context();
    cl_context clc2;
    assert_ok(skv_context_cl_objects(ctx2, &clc2, NULL, NULL, NULL));
    cl_mem m2 = clCreateBuffer(clc2, CL_MEM_READ_WRITE, 4096, NULL, &e);
    assert_int_equal(e, CL_SUCCESS);
    assert_int_equal(skv_seq_export_cl(a, s, m2, 0, 4096, &size, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    assert_non_null(strstr(skv_last_error(), "another cl_context"));
    assert_int_equal(skv_seq_import_cl(a, m2, 0, 100, &t, 0, NULL, NULL), SKV_ERR_INVALID_ARG);
    clReleaseMemObject(m2);
    clReleaseMemObject(m);
    skv_context_destroy(ctx2);
    skv_cache_destroy(a);
}

int main(int argc, char **argv)
{
    if (test_filter_args(argc, argv) != 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_f16),     cmocka_unit_test(test_round_trip_ada_host),
        cmocka_unit_test(test_rdr_keydiff),        cmocka_unit_test(test_rdr_other_scorers),
        cmocka_unit_test(test_truncated_and_corrupt), cmocka_unit_test(test_mismatch_refused),
        cmocka_unit_test(test_allocation_failures), cmocka_unit_test(test_cl_mem),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
